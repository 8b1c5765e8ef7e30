# Streaming: callbacks get OutputMessage objects as the cell prints.
from e2b_code_interpreter import Sandbox

out, err = [], []
with Sandbox.create() as sbx:
    sbx.run_code(
        "import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)",
        on_stdout=lambda msg: out.append(msg),
        on_stderr=lambda msg: err.append(msg),
    )
print("".join(m.line for m in out), end="")
print("".join(m.line for m in err), end="")
print(err[0].error, isinstance(out[0].timestamp, int))
# expect:
# to stdout
# to stderr
# True True
