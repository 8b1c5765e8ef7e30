# A non-zero exit raises CommandExitException, which carries the result.
from e2b_code_interpreter import Sandbox
from e2b import CommandExitException

with Sandbox.create() as sbx:
    try:
        sbx.commands.run("echo partial; echo oops >&2; exit 7")
    except CommandExitException as e:
        print(e.exit_code, e.stdout.strip(), e.stderr.strip())
# expect:
# 7 partial oops
