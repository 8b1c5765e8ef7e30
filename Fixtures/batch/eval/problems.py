"""Code-eval problems in the shape of HumanEval / MBPP tasks: a function written
against the standard library, then its unit tests. Each problem is a reference
solution (the code a model would have produced), a test-input generator and a
size, so that one task costs 20-100 ms of CPU on top of the interpreter's start.

make_tasks.py turns each (problem, size) into one batch task: the solution's
source, a `check(candidate)` of asserts whose expected values were computed here
from the same solution, and a call of it; some tasks carry a seeded bug so they
fail as a wrong answer would."""
import bisect
import collections
import functools
import heapq
import itertools
import math
import random
import re
import string

PROBLEMS = []


def problem(imports, sizes):
    """Registers a solution; `sizes` are the inputs' scales for its five tasks."""
    def wrap(fn):
        PROBLEMS.append((fn, imports, sizes))
        return fn
    return wrap


@problem("", [300, 400, 500, 600, 700])
def longest_common_subsequence(n):
    a = "".join("xyzw"[(i * i) % 4] for i in range(n))
    b = "".join("xyzw"[(i * 3 + 1) % 4] for i in range(n))
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


@problem("import heapq", [8000, 14000, 20000, 26000, 34000])
def dijkstra_grid(n):
    side = int(n ** 0.5)
    cost = [[(r * 7919 + c * 104729) % 9 + 1 for c in range(side)] for r in range(side)]
    dist = {(0, 0): cost[0][0]}
    heap = [(cost[0][0], 0, 0)]
    while heap:
        d, r, c = heapq.heappop(heap)
        if (r, c) == (side - 1, side - 1):
            return d
        if d > dist[(r, c)]:
            continue
        for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            nr, nc = r + dr, c + dc
            if 0 <= nr < side and 0 <= nc < side and d + cost[nr][nc] < dist.get((nr, nc), 1 << 60):
                dist[(nr, nc)] = d + cost[nr][nc]
                heapq.heappush(heap, (dist[(nr, nc)], nr, nc))
    return -1


@problem("", [150000, 250000, 350000, 450000, 600000])
def count_primes(n):
    sieve = bytearray([1]) * (n + 1)
    sieve[0:2] = b"\0\0"
    for i in range(2, int(n ** 0.5) + 1):
        if sieve[i]:
            sieve[i * i::i] = bytearray(len(sieve[i * i::i]))
    return sum(1 for i in range(n + 1) if sieve[i] and str(i) == str(i)[::-1])


@problem("import collections", [40000, 60000, 80000, 100000, 120000])
def top_k_words(n):
    words = ["w%d" % ((i * i * 31 + i * 7) % 997) for i in range(n)]
    counts = collections.Counter(words)
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]]


@problem("import itertools", [8, 8, 8, 8, 8])
def count_derangements_brute(n):
    return sum(1 for p in itertools.permutations(range(n)) if all(p[i] != i for i in range(n)))


@problem("import functools", [140, 170, 200, 220, 240])
def partitions_count(n):
    @functools.lru_cache(maxsize=None)
    def p(total, largest):
        if total == 0:
            return 1
        return sum(p(total - k, k) for k in range(1, min(total, largest) + 1))
    return p(n, n) % 1000000007


@problem("import re", [10000, 16000, 22000, 28000, 36000])
def extract_emails(n):
    text = " ".join("user%d@host%d.example.org and junk%d@@x" % (i, i % 13, i) for i in range(n))
    found = re.findall(r"\b[a-z0-9.]+@[a-z0-9]+\.[a-z.]+\b", text)
    return len(found), found[n // 2]


@problem("", [1000, 1100, 1200, 1300, 1400])
def matrix_chain_cost(n):
    dims = [(i * 37) % 50 + 2 for i in range(min(n // 10, 140) + 2)]
    m = len(dims) - 1
    dp = [[0] * m for _ in range(m)]
    for length in range(2, m + 1):
        for i in range(m - length + 1):
            j = i + length - 1
            dp[i][j] = min(dp[i][k] + dp[k + 1][j] + dims[i] * dims[k + 1] * dims[j + 1] for k in range(i, j))
    return dp[0][m - 1]


@problem("import bisect", [40000, 60000, 80000, 100000, 120000])
def longest_increasing_subsequence(n):
    seq = [(i * 2654435761) % 100003 for i in range(n)]
    tails = []
    for x in seq:
        i = bisect.bisect_left(tails, x)
        if i == len(tails):
            tails.append(x)
        else:
            tails[i] = x
    return len(tails)


@problem("import math", [40000, 70000, 100000, 130000, 160000])
def sum_of_totients(n):
    phi = list(range(n + 1))
    for i in range(2, n + 1):
        if phi[i] == i:
            for j in range(i, n + 1, i):
                phi[j] -= phi[j] // i
    return sum(phi) % 1000003, math.gcd(n, sum(phi))


@problem("import string", [15000, 25000, 35000, 45000, 55000])
def caesar_roundtrip(n):
    text = "".join(string.ascii_letters[(i * 7) % 52] for i in range(n))
    def shift(s, k):
        return "".join(string.ascii_lowercase[(string.ascii_lowercase.index(c) + k) % 26] if c.islower()
                       else string.ascii_uppercase[(string.ascii_uppercase.index(c) + k) % 26] for c in s)
    enc = shift(text, 13)
    return shift(enc, 13) == text, enc[:12]


@problem("import collections", [100, 150, 200, 250, 300])
def word_ladder_steps(n):
    words = {"".join(chr(97 + (i // 26 ** k) % 26) for k in range(3)) for i in range(n * 10)}
    start, goal = min(words), max(words)
    seen, q = {start}, collections.deque([(start, 0)])
    while q:
        w, d = q.popleft()
        if w == goal:
            return d
        for i in range(3):
            for ch in "abcdefghijklmnopqrstuvwxyz":
                nxt = w[:i] + ch + w[i + 1:]
                if nxt in words and nxt not in seen:
                    seen.add(nxt)
                    q.append((nxt, d + 1))
    return -1


@problem("", [9, 10, 10, 10, 10])
def n_queens(n):
    def place(row, cols, d1, d2):
        if row == n:
            return 1
        total = 0
        for c in range(n):
            if c not in cols and row - c not in d1 and row + c not in d2:
                total += place(row + 1, cols | {c}, d1 | {row - c}, d2 | {row + c})
        return total
    return place(0, frozenset(), frozenset(), frozenset())


@problem("import json", [4000, 7000, 10000, 13000, 16000])
def json_roundtrip_sum(n):
    import json
    doc = {"items": [{"id": i, "tags": ["t%d" % (i % 5), "x"], "price": i * 0.5} for i in range(n)]}
    back = json.loads(json.dumps(doc, sort_keys=True))
    return round(sum(x["price"] for x in back["items"] if "t3" in x["tags"]), 2)


@problem("import random", [60000, 90000, 120000, 150000, 200000])
def monte_carlo_pi(n):
    rng = random.Random(12345)
    inside = sum(1 for _ in range(n) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)
    return round(4 * inside / n, 3)


@problem("", [6000, 10000, 14000, 18000, 24000])
def balanced_brackets(n):
    pairs = {")": "(", "]": "[", "}": "{"}
    ok = 0
    for i in range(n):
        s = "".join("([{}])"[(i * k) % 6] for k in range(1, 12))
        stack = []
        for ch in s:
            if ch in "([{":
                stack.append(ch)
            elif not stack or stack.pop() != pairs[ch]:
                break
        else:
            ok += not stack
    return ok


@problem("import itertools", [17, 17, 18, 18, 18])
def subset_sum_count(n):
    nums = [(i * 17) % 23 + 1 for i in range(n)]
    target = sum(nums) // 3
    return sum(1 for r in range(n + 1) for c in itertools.combinations(nums, r) if sum(c) == target)


@problem("", [300, 380, 450, 520, 580])
def edit_distance(n):
    a = "".join("acgt"[(i * 3) % 4] for i in range(n))
    b = "".join("acgt"[(i * 5 + 1) % 4] for i in range(n))
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


@problem("import collections", [10000, 20000, 30000, 40000, 50000])
def topological_order(n):
    edges = [(i, (i * 7 + 3) % n) for i in range(n) if (i * 7 + 3) % n > i]
    indeg, out = collections.Counter(), collections.defaultdict(list)
    for a, b in edges:
        out[a].append(b)
        indeg[b] += 1
    q = collections.deque(i for i in range(n) if indeg[i] == 0)
    order = []
    while q:
        v = q.popleft()
        order.append(v)
        for w in out[v]:
            indeg[w] -= 1
            if indeg[w] == 0:
                q.append(w)
    return len(order), order[-1]


@problem("import fractions", [3000, 3500, 4000, 4500, 5000])
def harmonic_fraction(n):
    import fractions
    h = sum(fractions.Fraction(1, k) for k in range(1, n + 1))
    return h.numerator % 1000003, h.denominator % 1000003


@problem("import statistics", [30000, 45000, 60000, 80000, 100000])
def running_median_summary(n):
    import statistics
    xs = [(i * 7919) % 1009 for i in range(n)]
    return statistics.median(xs), round(statistics.pstdev(xs), 3), statistics.mode(xs)


@problem("", [30000, 60000, 90000, 120000, 150000])
def run_length_encode(n):
    s = "".join("ab"[(i // ((i % 7) + 1)) % 2] for i in range(n))
    out, i = [], 0
    while i < len(s):
        j = i
        while j < len(s) and s[j] == s[i]:
            j += 1
        out.append(f"{j - i}{s[i]}")
        i = j
    return len(out), "".join(out[:6])


@problem("import heapq", [30000, 50000, 70000, 90000, 110000])
def merge_k_sorted(n):
    lists = [sorted((i * k * 31) % 1000 for i in range(n // 10)) for k in range(1, 11)]
    merged = list(heapq.merge(*lists))
    return merged[len(merged) // 2], merged[-1], len(merged)


@problem("", [600, 800, 1000, 1200, 1400])
def knapsack(n):
    weights = [(i * 13) % 37 + 1 for i in range(n // 4)]
    values = [(i * 29) % 53 + 1 for i in range(n // 4)]
    cap = n
    best = [0] * (cap + 1)
    for w, v in zip(weights, values):
        for c in range(cap, w - 1, -1):
            best[c] = max(best[c], best[c - w] + v)
    return best[cap]


@problem("import collections", [9000, 15000, 21000, 27000, 33000])
def anagram_groups(n):
    words = ["".join(sorted("%05d" % ((i * 7919) % 100000)))[::-1] + "%d" % (i % 3) for i in range(n)]
    groups = collections.defaultdict(list)
    for w in words:
        groups["".join(sorted(w))].append(w)
    return len(groups), max(len(g) for g in groups.values())


@problem("", [70000, 110000, 150000, 200000, 260000])
def collatz_longest(n):
    cache = {1: 1}
    def length(x):
        path = []
        while x not in cache:
            path.append(x)
            x = x // 2 if x % 2 == 0 else 3 * x + 1
        k = cache[x]
        for y in reversed(path):
            k += 1
            cache[y] = k
        return k
    return max(range(1, n // 4), key=length)


@problem("import math", [80000, 120000, 160000, 200000, 250000])
def convex_hull_size(n):
    pts = sorted({((i * 7919) % 1000, (i * 104729) % 1000) for i in range(n)})
    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = lower[:-1] + upper[:-1]
    return len(hull), round(sum(math.dist(hull[i], hull[i - 1]) for i in range(len(hull))), 2)


@problem("", [360, 440, 500, 560, 620])
def spiral_matrix_sum(n):
    grid = [[r * n + c for c in range(n)] for r in range(n)]
    out, top, bottom, left, right = [], 0, n - 1, 0, n - 1
    while top <= bottom and left <= right:
        out += grid[top][left:right + 1]
        out += [grid[r][right] for r in range(top + 1, bottom + 1)]
        if top < bottom:
            out += grid[bottom][left:right][::-1]
        if left < right:
            out += [grid[r][left] for r in range(bottom - 1, top, -1)]
        top, bottom, left, right = top + 1, bottom - 1, left + 1, right - 1
    return sum(i * v for i, v in enumerate(out[:n * n])) % 1000003


@problem("import itertools", [5000, 8000, 11000, 14000, 18000])
def roman_numerals(n):
    table = [(1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"), (50, "L"), (40, "XL"),
             (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]
    def to_roman(x):
        out = []
        for v, s in table:
            while x >= v:
                out.append(s)
                x -= v
        return "".join(out)
    def from_roman(s):
        vals = {s: v for v, s in table if len(s) == 1}
        return sum(-vals[a] if vals[a] < vals[b] else vals[a] for a, b in itertools.zip_longest(s, s[1:], fillvalue="I")) \
            if s else 0
    return sum(from_roman(to_roman(1 + i % 3999)) == 1 + i % 3999 for i in range(n))


@problem("", [20000, 35000, 45000, 55000, 65000])
def merge_intervals(n):
    spans = sorted(((i * 7919) % (n * 3), (i * 7919) % (n * 3) + (i % 17) + 1) for i in range(n))
    merged = [list(spans[0])]
    for a, b in spans[1:]:
        if a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return len(merged), sum(b - a for a, b in merged)
