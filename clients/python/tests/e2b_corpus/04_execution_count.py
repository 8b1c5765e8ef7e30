from e2b_code_interpreter import Sandbox

with Sandbox.create() as sbx:
    counts = [sbx.run_code("None").execution_count for _ in range(3)]
    print(counts == sorted(counts) and len(set(counts)) == 3)
# expect:
# True
