"""``autoprompt bench`` as the Markdown table README shows: one column per dtype the machine runs."""

from __future__ import annotations

from typing import Any

_CEILINGS = {"fp32": "GEMM ceiling fp32 (as tuned)", "fp32_stock": "GEMM ceiling fp32 (torch stock)",
             "bf16": "GEMM ceiling bf16", "bf16_emulated": "GEMM bf16 (no bf16 hardware: emulated)"}


def format_table(result: dict[str, Any]) -> str:
    """The bench as a Markdown table: the ceilings, then engine, references, a trigger step and a
    template trial in each dtype (one column each)."""
    m, w = result["machine"], result["workload"]
    dtypes = result["dtypes"]
    names = list(dtypes)
    slots = next(iter(dtypes.values()))["slots"]
    lines = [f"device: {m['device']}, {m['threads']} threads, torch {m['torch']}, model {result['model']['name']} "
             f"({result['model']['dtype']}); workload: {w['task']}, {w['candidates']} candidates x "
             f"{w['examples']} examples x {w['rounds']} rounds (slots {slots})", ""]
    lines += ["| measure | value |", "|---|---|"]
    lines += [f"| {_CEILINGS[k]} | {v:,.1f} GFLOP/s |" for k, v in result["ceiling_gflops"].items()]
    lines += ["", "| measure | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def row(label: str, cell) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(dtypes[n], n) for n in names) + " |")

    row("engine: candidate x example scorings", lambda e, n: f"{e['scorings_per_s']:,.1f} /s")
    row("engine: tokens computed", lambda e, n: f"{e['tokens_per_s']:,.0f} /s")
    row("engine: achieved", lambda e, n: f"{e['gflops']:,.1f} GFLOP/s = {100 * e['fraction_of_ceiling']:.0f}% "
        f"of the {n} ceiling")
    row("nanoGCG's way: scorings", lambda e, n: f"{e['nanogcg']['scorings_per_s']:,.1f} /s")
    row("**engine / nanoGCG's way**", lambda e, n: f"**{e['vs_nanogcg']:.2f}x**")
    row("largest loss difference, engine vs nanoGCG's way", lambda e, n: f"{e['nanogcg']['max_loss_difference']:.1e}")
    if "naive" in result:
        n = result["naive"]
        lines += [f"| naive (fp32): candidate x example scorings | {n['scorings_per_s']:,.1f} /s |",
                  f"| naive (fp32): tokens computed | {n['tokens_per_s']:,.0f} /s (padded to {n['padded_length']}) |",
                  f"| **engine / naive (fp32)** | **{result['speedup']:.1f}x** ({result['flop_ratio']:.1f}x fewer "
                  "FLOPs) |",
                  f"| largest loss difference, engine vs naive | {result['max_loss_difference']:.1e} |"]
    row("one trigger step: gradient", lambda e, n: f"{e['step']['gradient_s']:.2f} s")
    row("one trigger step: candidates + confirm", lambda e, n: f"{e['step']['candidates_s']:.2f} s + "
        f"{e['step']['confirm_s']:.2f} s")
    row("one trigger step: total", lambda e, n: f"{e['step']['total_s']:.2f} s")
    row("template trial, 0 demonstrations", lambda e, n: f"{e['template']['demos_0_per_s']:,.1f} dev examples/s")
    demos = next(k for k in next(iter(dtypes.values()))["template"] if k != "demos_0_per_s")
    row(f"template trial, {demos.split('_')[1]} demonstrations",
        lambda e, n: f"{e['template'][demos]:,.1f} dev examples/s")
    return "\n".join(lines)
