from e2b_code_interpreter import Sandbox

seen = []
with Sandbox.create() as sbx:
    sbx.run_code("{'answer': 42}", on_result=lambda result: seen.append(result))
print(len(seen), seen[0].text, seen[0].is_main_result)
# expect:
# 1 {'answer': 42} True
