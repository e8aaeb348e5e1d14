"""The CPU speed tables of docs/results.md: step time against ``torch.optim.Muon``, the
Newton-Schulz coefficient sets, the DDP split (``benchmarks/make_tables.py`` calls them)."""

from __future__ import annotations

from md_tables import provenance, table


def step_time_tables(data: dict) -> str:
    """``step_time.json``: each optimizer against ``torch.optim.Muon`` measured as a pair in its
    own fresh process (the ratio is the one to read; absolute times of different pairs come
    from different processes and loads), with weight decay, state and step peak memory."""
    out = [f"{data['method']}.\n"] if "method" in data else []
    for model, results in data["models"].items():
        rows = []
        for name, r in results.items():
            anchor = r.get("anchor", r if name == "torch_muon" else None)  # None: --no-anchor
            load = r.get("load_average_1m")
            rows.append(
                [
                    name,
                    _short(r.get("weight_decay")),
                    f"{r['median_ms']:.1f}",
                    "-" if anchor is None else f"{anchor['median_ms']:.1f}",
                    _ratio(r.get("ratio_to_torch_muon")),
                    _ratio(r.get("cpu_ratio_to_torch_muon")),
                    f"{r['state_bytes'] / 2**20:.1f}",
                    f"{r['step_peak_bytes'] / 2**20:.2f}",
                    "-" if load is None else "–".join(f"{v:.1f}" for v in load),
                ]
            )
        out += [
            f"**Optimizer step, {model}** (each row: that optimizer and torch Muon alone in one "
            "process)\n",
            table(
                [
                    "optimizer",
                    "weight decay",
                    "median ms",
                    "torch Muon ms (same pair)",
                    "× torch Muon (wall)",
                    "× torch Muon (CPU time)",
                    "state MiB",
                    "step peak MiB",
                    "load (1 min)",
                ],
                rows,
            ),
            "",
        ]
    out.append(provenance(data.get("meta", {})))
    return "\n".join(out)


LIMIT_ROWS = (
    ("torch_muon", "torch.optim.Muon, its default (bf16 Newton-Schulz)"),
    ("amuse", 'AMUSE, its default (`ns_dtype="auto"`)'),
    ("amuse_float32", 'AMUSE, `ns_dtype="float32"`'),
    ("amuse_bf16", 'AMUSE, `ns_dtype="bfloat16"`'),
)


def limit_table(data: dict, setting: str) -> str:
    """``step_time.json`` with ``limits``: per matrix set, torch Muon's and AMUSE's defaults and
    AMUSE in float32 / bf16, each against torch Muon and against this machine's limit for the
    step (``machine_limit.py``), measured in one run; the GPU column is unmeasured here."""
    out = []
    for model, rows in data["models"].items():
        limit = data.get("limits", {}).get(model)
        if limit is None:
            continue
        body = []
        for name, label in LIMIT_ROWS:
            r = rows.get(name)
            if r is None:
                continue
            body.append([label, r.get("ns_dtype", "-"), f"{r['median_ms']:.0f}",
                         _ratio(r.get("ratio_to_torch_muon")), _ratio(r.get("ratio_to_limit")),
                         "unmeasured"])  # fmt: skip
        rates = ", ".join(f"{k} {v:.0f}" for k, v in limit["matmul_gflops"].items())
        body.append([
            f"the limit: {limit['ns_gflop']:.0f} GFLOP of Newton-Schulz at the best product "
            f"rate ({rates} GFLOP/s) + 7 float32 passes at {limit['bandwidth_gbs']:.0f} GB/s",
            "-", f"{limit['limit_ms']['amuse']:.0f}", "-", "1.000", "unmeasured",
        ])  # fmt: skip
        out += [f"**{model}, {setting}**\n",
                table(["optimizer step", "Newton-Schulz in", "CPU ms", "× torch Muon",
                       "× the limit", "GPU"], body), ""]  # fmt: skip
    out.append(provenance(data.get("meta", {})))
    return "\n".join(out)


def compact_limit_table(datasets: list[tuple[str, dict]]) -> str:
    """One row per (setting, matrix set): step milliseconds of torch Muon's default, AMUSE's
    default (with the dtype ``"auto"`` chose), AMUSE in float32 and in bf16, the limit, and the
    default's ratios; the GPU column is unmeasured."""
    rows = []
    for setting, data in datasets:
        for model, found in data["models"].items():
            limit = data.get("limits", {}).get(model)
            if limit is None or "amuse" not in found:
                continue
            ms = {n: f"{found[n]['median_ms']:.0f}" if n in found else "-"
                  for n in ("torch_muon", "amuse", "amuse_float32", "amuse_bf16")}  # fmt: skip
            rows.append([setting, model, ms["torch_muon"],
                         f"{ms['amuse']} ({found['amuse'].get('ns_dtype')})",
                         ms["amuse_float32"], ms["amuse_bf16"],
                         f"{limit['limit_ms']['amuse']:.0f}",
                         _ratio(found["amuse"].get("ratio_to_torch_muon")),
                         _ratio(found["amuse"].get("ratio_to_limit")), "unmeasured"])  # fmt: skip
    header = ["CPU", "matrices", "torch Muon ms", "AMUSE default ms", "AMUSE float32 ms",
              "AMUSE bf16 ms", "limit ms", "default × torch Muon", "default × limit",
              "GPU"]  # fmt: skip
    return table(header, rows, left=2)


def ns_coefficient_tables(data: dict) -> str:
    """``ns_coefficients.json``: distance of the singular values from 1 after k Newton-Schulz
    steps, quintic against Polar Express, per matrix kind and dtype."""
    rows = [
        [
            r["matrix"],
            r["ns_dtype"],
            r["steps"],
            f"{r['quintic']['max_abs_sv_minus_1']:.3g}",
            f"{r['polar_express']['max_abs_sv_minus_1']:.3g}",
            f"{r['quintic']['rel_polar_error']:.3g}",
            f"{r['polar_express']['rel_polar_error']:.3g}",
        ]
        for r in data["results"]
    ]
    shape = "x".join(str(n) for n in data.get("shape", []))
    return "\n".join(
        [
            f"Matrices {shape}; the largest distance of a singular value from 1 and the relative "
            "distance to the exact polar factor (SVD), after the same number of steps.\n",
            "<details><summary>Error after k steps, quintic vs Polar Express</summary>\n",
            table(
                [
                    "matrix",
                    "dtype",
                    "steps",
                    "quintic max abs(σ-1)",
                    "Polar Express max abs(σ-1)",
                    "quintic polar error",
                    "Polar Express polar error",
                ],
                rows,
            ),
            "\n</details>\n",
            provenance(data.get("meta", {})),
        ]
    )


def distributed_tables(data: dict) -> str:
    """``distributed_step.json``: the slowest rank's step per world size, and the ratios."""
    if "results" not in data:
        return generic_tables(data)
    rows = []
    for world, r in data["results"].items():
        slowest = r["slowest_rank"]
        matrices = "/".join(str(rank.get("matrices", "?")) for rank in r["per_rank"])
        rows.append(
            [
                world,
                len(r["per_rank"]),
                matrices,
                f"{1e3 * slowest['step_s']:.1f}",
                f"{1e3 * slowest['ns_s']:.1f}",
                f"{1e3 * slowest['gather_s']:.1f}",
            ]
        )
    cfg = data.get("config", {})
    out = [
        f"**AMUSE step per rank** ({cfg.get('matrices', '?')} matrices, slowest rank, "
        "milliseconds)\n",
        table(
            [
                "setting",
                "ranks",
                "matrices per rank",
                "step ms",
                "Newton-Schulz ms",
                "all-gather ms",
            ],
            rows,
        ),
    ]
    ratios = data.get("ratios")
    if ratios:
        goal = data.get("goal_ns_ratio")
        note = f"; goal for Newton-Schulz <= {goal}" if goal else ""
        out += [
            f"\n**Ratios** (2 ranks over 1{note})\n",
            table(["ratio", "value"], [[k, f"{v:.3f}"] for k, v in ratios.items()]),
        ]
    meta = data.get("meta") or data.get("machine", {})
    out.append("\n" + provenance(meta))
    return "\n".join(out)


def generic_tables(data: dict) -> str:
    """Any JSON with a list of flat ``records``: one row per record, scalar fields as columns."""
    records = data.get("records")
    if not isinstance(records, list) or not records:
        raise KeyError("records")
    columns = [k for k, v in records[0].items() if isinstance(v, (int, float, str, bool))]
    rows = [[_short(r.get(c)) for c in columns] for r in records]
    return table(columns, rows) + "\n\n" + provenance(data.get("meta", {}))


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
