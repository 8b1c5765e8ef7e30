from e2b_code_interpreter import Sandbox

with Sandbox.create() as sbx:
    ctx = sbx.create_code_context(cwd="/tmp")
    sbx.run_code("value = 'in context'", context=ctx)
    print(sbx.run_code("value", context=ctx).text)
    print(sbx.run_code("import os; os.getcwd()", context=ctx).text)
    print(sbx.run_code("'value' in globals()").text)
    print(ctx.language, ctx.cwd)
# expect:
# 'in context'
# '/tmp'
# False
# python /tmp
