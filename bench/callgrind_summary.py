#!/usr/bin/env python3
"""Per-request instruction counts from two callgrind dumps of legate: one with
the wasm filter, one without (written by bench/profile-wasm.sh).

    callgrind_summary.py WITH.out WITH_REQUESTS WITHOUT.out WITHOUT_REQUESTS [TOP]

Prints, per request (Ir = instructions executed):
  - the total Ir with and without the filter;
  - self Ir by where the code lives: legate's wasm host (legate::wasm::*),
    the wasmtime crate, guest code compiled by wasmtime (no symbol), libc
    (malloc/free/memcpy), and the rest of legate and its dependencies;
  - the functions whose self Ir grew most with the filter;
  - the inclusive Ir of legate::wasm::* functions;
  - calls per request to malloc/free/memcpy, into the guest, and from the guest
    into host functions.

This parses the callgrind format itself: callgrind_annotate 3.19 adds call
costs to the caller's self cost in these files (clone() shows ~100% self).
Inclusive cost is self plus the cost of calls to other functions; with
recursion it over-counts, which does not matter for the functions shown.
"""
import collections
import re
import sys


def parse(path):
    """-> (self Ir, inclusive Ir, call counts by callee), keyed by (function, object)."""
    names = {"fn": {}, "ob": {}}
    self_ir = collections.Counter()
    call_ir = collections.Counter()
    ncalls = collections.Counter()
    fn = ob = cfn = cob = None
    pending = 0  # >0: the next cost line is the cost of that many calls to cfn

    def name(kind, val):
        m = re.match(r"\((\d+)\)(?:\s+(.*))?$", val)
        if not m:
            return val
        if m.group(2) is not None:
            names[kind][m.group(1)] = m.group(2)
        return names[kind].get(m.group(1), val)

    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                parts = line.split()
                if len(parts) < 2:
                    continue
                cost = int(parts[1])
                if pending:
                    if cfn[0].split("'")[0] != fn[0].split("'")[0]:
                        call_ir[fn] += cost
                        ncalls[cfn] += pending
                    pending = 0
                else:
                    self_ir[fn] += cost
            elif line.startswith("fn="):
                fn = (name("fn", line[3:]), ob)
            elif line.startswith("ob="):
                ob = name("ob", line[3:])
            elif line.startswith("cob="):
                cob = name("ob", line[4:])
            elif line.startswith("cfn="):
                cfn = (name("fn", line[4:]), cob if cob is not None else ob)
                cob = None
            elif line.startswith("calls="):
                pending = int(line[6:].split()[0]) or 1
    incl = collections.Counter()
    for k in set(self_ir) | set(call_ir):
        incl[k] = self_ir[k] + call_ir[k]
    return self_ir, incl, ncalls


def where(key):
    fn, ob = key
    obj = (ob or "").rsplit("/", 1)[-1]
    if obj in ("", "???"):
        return "guest code (JIT, no symbol)"
    if obj.startswith("libc"):
        return "libc (malloc/free/memcpy...)"
    if "legate::wasm" in fn:
        return "legate::wasm host"
    if fn.startswith(("wasmtime", "<wasmtime", "cranelift")):
        return "wasmtime crate"
    if obj == "legate":
        return "rest of legate + deps"
    return obj


def short(key, width=120):
    fn = key[0]
    return fn if len(fn) <= width else fn[: width - 3] + "..."


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    w_path, w_n, p_path, p_n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    top = int(sys.argv[5]) if len(sys.argv) > 5 else 25
    ws, wi, wc = parse(w_path)
    ps, pi, pc = parse(p_path)
    wt, pt = sum(ws.values()) / w_n, sum(ps.values()) / p_n
    print(f"Ir per request: with filter {wt:,.0f} ({w_n} requests), without {pt:,.0f} ({p_n} requests), "
          f"filter adds {wt - pt:,.0f} (+{(wt - pt) * 100 / pt:.0f}%)")

    print("\nSelf Ir per request by where the code lives (with / without / added):")
    wb, pb = collections.Counter(), collections.Counter()
    for k, v in ws.items():
        wb[where(k)] += v / w_n
    for k, v in ps.items():
        pb[where(k)] += v / p_n
    for g in sorted(set(wb) | set(pb), key=lambda g: -(wb[g] - pb[g])):
        print(f"  {wb[g]:8,.0f} / {pb[g]:8,.0f} / {wb[g] - pb[g]:+8,.0f}  {g}")

    print(f"\nTop {top} functions by added self Ir per request (added: with / without):")
    keys = set(ws) | set(ps)
    for k in sorted(keys, key=lambda k: -(ws[k] / w_n - ps[k] / p_n))[:top]:
        print(f"  {ws[k] / w_n - ps[k] / p_n:+7,.0f}: {ws[k] / w_n:7,.0f} / {ps[k] / p_n:7,.0f}  {short(k)}")

    print(f"\nTop {top} legate::wasm functions by inclusive Ir per request (inclusive, self):")
    for k in sorted([k for k in wi if "legate::wasm" in k[0]], key=lambda k: -wi[k])[:top]:
        print(f"  {wi[k] / w_n:7,.0f} {ws[k] / w_n:7,.0f}  {short(k)}")

    def calls(cnt, n, pred):
        return sum(v for k, v in cnt.items() if pred(k[0])) / n

    print("\nCalls per request (with / without):")
    for label, pred in [
        ("malloc", lambda f: f == "malloc"),
        ("free", lambda f: f == "free"),
        ("memcpy", lambda f: f.startswith("__memcpy")),
        ("into the guest (invoke_wasm_and_catch_traps)",
         lambda f: f.split("'")[0] == "wasmtime::runtime::func::invoke_wasm_and_catch_traps"),
        ("guest -> host functions (catch_unwind_and_record_trap)",
         lambda f: f.split("'")[0] == "wasmtime::runtime::vm::traphandlers::catch_unwind_and_record_trap"),
    ]:
        print(f"  {calls(wc, w_n, pred):7.2f} / {calls(pc, p_n, pred):7.2f}  {label}")
    print("  host functions called by the guest (calls per request):")
    for k, v in sorted(wc.items(), key=lambda kv: -kv[1]):
        if k[0].startswith("legate::wasm::abi::") and v / w_n >= 0.5:
            print(f"    {v / w_n:6.2f}  {short(k)}")


if __name__ == "__main__":
    main()
