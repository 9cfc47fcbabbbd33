"""The README's Performance table, from a bench run's results.csv.

    python benchmarks/readme_table.py benchmarks/results/cpu/results.csv

Prints the forward + backward rows (float32, n = 2000, 2^20, 2^24) in the README's columns; paste
them over the table there after a rerun, so the README quotes the committed run and nothing else.
"""

import argparse
import csv

from torchext.bench import fmt, n_text

SIZES = (2000, 1 << 20, 1 << 24)
HEAD = ("| op | n | torchext µs (IQR) | vs tutorial | vs eager | vs torch.compile "
        "| torch.neg µs (floor) | torchext GB/s | peak MB: torchext / eager |")


def table(path: str, pass_: str = "fwdbwd", dtype: str = "float32") -> list[str]:
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f)
                if r["pass"] == pass_ and r["dtype"] == dtype and not r["shape"]]
    idx = {(r["op"], r["impl"], int(r["n"])): r for r in rows}
    ops = list(dict.fromkeys(r["op"] for r in rows if r["impl"] == "torchext"))
    lines = [HEAD, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for op in ops:
        for n in SIZES:
            mine = idx[op, "torchext", n]
            t = float(mine["median_us"])
            iqr = float(mine["iqr_us"])
            busy = "*" if iqr > t / 4 else ""  # the README's footnote: a busy cell
            vs = [f"{float(idx[op, c, n]['median_us']) / t:.2f}×"
                  for c in ("tutorial", "eager", "compile")]
            neg = float(idx["floor", "neg", n]["median_us"])
            mem = " / ".join(f"{float(idx[op, c, n]['peak_mem_mb']):.3g}"
                             for c in ("torchext", "eager"))
            lines.append(f"| {op} | {n_text(n)} | {fmt(t)} ({fmt(iqr)}){busy} | "
                         f"{' | '.join(vs)} | {fmt(neg)} | {float(mine['gbps']):.3g} | {mem} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", help="a bench run's results.csv")
    print("\n".join(table(parser.parse_args().csv)))


if __name__ == "__main__":
    main()
