from e2b_code_interpreter import Sandbox

errors = []
with Sandbox.create() as sbx:
    sbx.run_code("undefined_name", on_error=lambda error: errors.append(error))
print(errors[0].name, errors[0].value)
# expect:
# NameError name 'undefined_name' is not defined
