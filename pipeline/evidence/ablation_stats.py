"""The ablation's outputs from its per-run records: reports/ablation.{json,md,png}.

Every arm's mean ± std over seeds, the paired-by-seed differences DDFP - each other arm at the smallest
split with their 95 % t-interval against the goals, the label curve, the diagnostics, and which code
the records come from.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from scipy import stats

from ddfp.config import METHODS
from pipeline import figures
from pipeline.files import write_json_atomic, write_text_atomic
from pipeline.params import Config
from pipeline.stages.report import labels_of, numeric_markdown

DIAGNOSTICS = ("confident_ratio", "nll_fit", "nll_query", "nll_after", "nll_rise", "pl_confident_share",
               "pl_precision", "pl_fg_coverage", "pl_bg_share")


@dataclass(frozen=True)
class Goal:
    gap: float  # arm - other arm, mIoU points
    strict: bool  # gap > goal rather than >=
    ci_above_zero: bool  # the 95 % interval of the paired difference must exclude 0 as well

    def text(self) -> str:
        bound = f"{self.gap:+g}" if self.gap else "0"
        return f"{'>' if self.strict else '>='} {bound}" + (", CI above 0" if self.ci_above_zero else "")


# (arm, other arm) -> goal for arm - other at the smallest split. The first says whether the setting
# shows semi-supervision at all; the last three whether the density direction matters.
GOALS: dict[tuple[str, str], Goal] = {
    ("mean_teacher", "supervised"): Goal(5.0, False, True),
    ("ddfp", "supervised"): Goal(10.0, False, False),
    ("ddfp", "mean_teacher"): Goal(0.0, False, True),
    ("ddfp", "unimatch"): Goal(0.0, False, False),
    ("ddfp", "ddfp_eps0"): Goal(0.0, True, True),
    ("ddfp", "ddfp_random"): Goal(0.0, True, True),
    ("ddfp", "ddfp_dropout"): Goal(0.0, True, True),
}


@dataclass(frozen=True)
class Paired:
    n: int
    mean: float
    low: float  # 95 % confidence interval of the mean difference (t-distribution); NaN below 2 pairs
    high: float
    sd: float = math.nan  # standard deviation of the paired differences: what the next study's size needs


def paired_difference(a: dict[int, float], b: dict[int, float]) -> Paired:
    """a - b over the seeds both have: seed k of one arm shares its data order and initialisation with
    seed k of the other, so the differences carry less seed noise than the two means."""
    d = [a[s] - b[s] for s in sorted(set(a) & set(b))]
    if len(d) < 2:
        return Paired(len(d), d[0] if d else math.nan, math.nan, math.nan)
    sd = statistics.stdev(d)
    mean, half = statistics.fmean(d), stats.t.ppf(0.975, len(d) - 1) * sd / math.sqrt(len(d))
    return Paired(len(d), mean, mean - half, mean + half, sd)


def goal_rows(per_arm: dict[str, dict[int, float]]) -> list[dict[str, Any]]:
    """One row per goal at the smallest split, paired by seed (per_arm: {arm: {seed: mIoU}})."""
    rows = []
    for (arm, other), goal in GOALS.items():
        p = paired_difference(per_arm.get(arm, {}), per_arm.get(other, {}))
        on_mean = p.mean > goal.gap if goal.strict else p.mean >= goal.gap
        met = p.n > 0 and on_mean and (not goal.ci_above_zero or p.low > 0)
        rows.append({"comparison": f"{_name(arm)} - {other}", "n": p.n, "mean": _mean(p),
                     "95% CI": _ci(p), "sd": _sd(p), "goal": goal.text(),
                     "verdict": _verdict(p.n, met)})
    return rows


def _verdict(pairs: int, met: bool) -> str:
    # One pair has no interval and no spread: its difference is one seed's, not a finding either way.
    if pairs < 2:
        return "no pairs yet" if pairs == 0 else "one pair: no verdict"
    return "met" if met else "NOT met"


PAIRS = (("ddfp", "supervised"), ("mean_teacher", "supervised"), ("fixmatch", "supervised"),
         ("unimatch", "supervised"), ("ddfp", "mean_teacher"), ("ddfp", "unimatch"))


def _mean(p: Paired) -> str:
    return "-" if math.isnan(p.mean) else f"{p.mean:+.2f}"


def _ci(p: Paired) -> str:
    return "-" if math.isnan(p.low) else f"[{p.low:+.2f}, {p.high:+.2f}]"


def _sd(p: Paired) -> str:
    return "-" if math.isnan(p.sd) else f"{p.sd:.2f}"


def split_pairs(frame: pd.DataFrame, splits: list[str]) -> list[dict[str, Any]]:
    """The main methods' paired differences at every split: what the label curve says per seed. Only
    the smallest split carries the goals; these are for reading, not for claiming."""
    rows = []
    for split in sorted(set(frame["split"]), key=lambda s: labels_of(s, splits)):
        at = frame[frame.split == split]
        per_arm = {a: dict(zip(g["seed"], g["val_miou"])) for a, g in at.groupby("arm")}
        for a, b in PAIRS:
            if a in per_arm and b in per_arm:
                p = paired_difference(per_arm[a], per_arm[b])
                rows.append({"labels": labels_of(split, splits), "comparison": f"{_name(a)} - {b}", "n": p.n,
                             "mean": _mean(p), "95% CI": _ci(p), "sd": _sd(p)})
    return rows


def _name(arm: str) -> str:
    return arm.replace("ddfp", "DDFP")


def summary_frame(cfg: Config, frame: pd.DataFrame) -> pd.DataFrame:
    g = frame.groupby(["arm", "split"])["val_miou"]
    summary = pd.concat([g.mean().rename("mean"), g.std().fillna(0.0).rename("std"), g.count().rename("seeds")],
                        axis=1).reset_index()
    summary["labels"] = [labels_of(s, cfg.data.splits) for s in summary["split"]]
    return summary


def curve_lines(summary: pd.DataFrame) -> list[str]:
    """Whether each main method's mean rises with every added label split."""
    lines = []
    for arm in METHODS:
        rows = summary[summary.arm == arm].sort_values("labels")
        if len(rows) > 1:
            means = list(rows["mean"])
            rises = all(b > a for a, b in zip(means, means[1:]))
            lines.append(f"- {arm}: {' -> '.join(f'{m:.2f}' for m in means)} (rises with labels: "
                         f"{'met' if rises else 'NOT met'})")
    return lines or ["- (one split only)"]


def provenance(records: list[dict[str, Any]], digest: str) -> str:
    """Which training code the records come from; records of other code are used, and said so."""
    other = Counter(r.get("code_digest", "unknown")[:8] for r in records if r.get("code_digest") != digest)
    if not other:
        return f"All {len(records)} records come from this code (digest {digest[:8]})."
    names = ", ".join(d for d, _ in other.most_common())
    return (f"{sum(other.values())} of {len(records)} records come from other code ({names}); the rest from "
            f"this code ({digest[:8]}). Delete a record to train it again with this code.")


def _table(summary: pd.DataFrame, arms: list[str]) -> str:
    cell = summary.assign(cell=[f"{r['mean']:.2f} ± {r['std']:.2f} ({r['seeds']})" for _, r in summary.iterrows()])
    table = cell.pivot(index="labels", columns="arm", values="cell")
    return table[[a for a in arms if a in table.columns]].fillna("-").reset_index().to_markdown(
        index=False, disable_numparse=True)


def _diagnostics(frame: pd.DataFrame) -> str:
    diag = pd.DataFrame([{"arm": r.arm, "split": r.split, **r.diagnostics} for r in frame.itertuples()])
    columns = [c for c in DIAGNOSTICS if c in diag.columns]
    if not columns:
        return "(none logged)"
    values = diag[["arm", "split"]].join(diag[columns].astype(float))  # a null ratio (no pixels) is NaN here
    return numeric_markdown(values.groupby(["arm", "split"], sort=False).mean().reset_index())


def write_outputs(cfg: Config, records: list[dict[str, Any]], out: Path, digest: str,
                  planned: int | None = None) -> dict[str, Any]:
    """ablation.json ({arm: {split: {seed: mIoU}}}), ablation.md, ablation.png and ablation_goals.md
    (the goals table alone, which the README puts beside the one-seed demo); returns the JSON's
    content and the provenance line. planned: the runs of the plan, when some have no record yet."""
    frame = pd.DataFrame(records)
    arms = list(dict.fromkeys(frame["arm"]))
    miou = {a: {s: {str(r.seed): r.val_miou for r in g.itertuples()} for s, g in frame[frame.arm == a].groupby("split")}
            for a in arms}
    summary = summary_frame(cfg, frame)
    smallest = min(cfg.data.splits, key=lambda s: labels_of(s, cfg.data.splits))
    at = frame[frame.split == smallest]
    per_arm = {a: dict(zip(g["seed"], g["val_miou"])) for a, g in at.groupby("arm")}
    goals = pd.DataFrame(goal_rows(per_arm)).to_markdown(index=False, disable_numparse=True)
    line = provenance(records, digest)
    if planned is not None and planned > len(records):
        line = (f"**Under way: {len(records)} of the plan's {planned} runs are recorded**; every table below "
                f"holds those only. {line}")
    ref = summary[(summary.arm == "all_labels") & (summary.split == smallest)]
    reference = ("all_labels (every training image)", float(ref["mean"].iloc[0])) if len(ref) else None
    title = f"ablation: {cfg.data.dataset}, {cfg.model.backbone} ({cfg.profile} profile)"
    figures.miou_vs_labels(summary[summary.arm != "all_labels"].rename(columns={"arm": "method"}),
                           out / "ablation.png", title, reference)
    write_json_atomic(miou, out / "ablation.json")
    t = cfg.train
    text = "\n".join([
        f"# Ablation: {cfg.data.dataset} ({cfg.profile} profile)", "",
        f"Validation mIoU (%) of the reported model ({cfg.eval.model}; the student for supervised arms), mean ± "
        f"std over seeds (count). eps "
        f"{cfg.perturb.eps}, threshold {t.conf_thresh}, {t.epochs} epochs of "
        f"{t.iters_per_epoch or '|unlabelled| / batch'} iterations. Per-run records: ablation_runs/; "
        "raw values: ablation.json.", "", line, "", _table(summary, arms), "",
        f"Paired by seed at the smallest split ({smallest} labels), against the goals: mean difference, its "
        "95 % confidence interval (t-distribution, n - 1 degrees of freedom) and the standard deviation of "
        "the paired differences (what sizes the next study).", "",
        goals, "",
        "Label curve (mean mIoU by labelled split):", "", *curve_lines(summary), "",
        "Paired by seed at every split (the main methods; no goal here, and the splits other than the "
        "smallest have fewer seeds):", "",
        pd.DataFrame(split_pairs(frame, cfg.data.splits)).to_markdown(index=False, disable_numparse=True), "",
        "Diagnostics, means over seeds. From the training log (last epoch's logged iterations): confident_ratio, "
        "nll_fit (flow NLL where it is fitted), nll_query (where the perturbation gradient is taken), nll_after, "
        "nll_rise = nll_after - nll_query. From the final teacher (student for supervised arms) on the "
        "unlabelled training images against their masks: pl_confident_share, pl_precision (of confident "
        "pixels), pl_fg_coverage (foreground pixels with a confident pseudo-label), pl_bg_share (confident "
        "pixels labelled background).", "", _diagnostics(frame), "",
        "![mIoU vs labels](ablation.png)", "",
    ])
    write_text_atomic(out / "ablation.md", text)
    write_text_atomic(out / "ablation_goals.md", "\n".join([
        "# Ablation goals", "",
        f"The ablation's paired differences at {smallest} labels (val mIoU points; seed k of each arm "
        "shares its initialisation and data order; 95 % t-interval; sd of the paired differences). "
        f"Full report: ablation.md. {line}", "", goals, ""]))
    return {"miou": miou, "provenance": line}
