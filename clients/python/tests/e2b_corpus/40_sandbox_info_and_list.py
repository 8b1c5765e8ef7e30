from e2b_code_interpreter import Sandbox

sbx = Sandbox.create(metadata={"purpose": "corpus"})
info = sbx.get_info()
print(info.sandbox_id == sbx.sandbox_id, info.metadata)
listed = Sandbox.list().next_items()
print(any(s.sandbox_id == sbx.sandbox_id for s in listed))
print(sbx.is_running())
sbx.kill()
print(sbx.is_running())
# expect:
# True {'purpose': 'corpus'}
# True
# True
# False
