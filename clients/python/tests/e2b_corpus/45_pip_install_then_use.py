# Installing a package needs the network: Sandpit's default policy has none. Without it pip fails
# and says so, instead of hanging.
from e2b_code_interpreter import Sandbox
from e2b import CommandExitException

with Sandbox.create() as sbx:
    try:
        sbx.commands.run("pip install --quiet --retries 0 --timeout 3 some-package-that-needs-network", timeout=60)
    except CommandExitException as e:
        print("pip failed:", e.exit_code != 0)
# expect:
# pip failed: True
