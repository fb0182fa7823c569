"""The lecture's question, asked of a served Chinese language model through the Score API:
"我是中国人，我说 … 中文? 英文?" — does the model remember the nationality several characters back?

For each nationality / language pair that occurs in the model's training text, every template
"{S}是{C}人，{S}{V}" (S in 我/他/她, V in 说/会说) is scored with every language word as the
continuation; the pair is right when an accepted language of that nationality is the most probable.
The margin is log P(best accepted) - log P(best other). Then the context before 说 is cut away one
character at a time ("我是中国人，我说" -> "是中国人，我说" -> ... -> "说") and the margin plotted:
the memory the lecture is about.

    python scripts/lecture_memory.py --plot docs/lecture/memory.png --json docs/lecture/pairs.json

starts `seqserve serve` on a free loopback port over --models (default models/) unless --address
names a running server. The templates are never training data: the model is trained on Tatoeba's
sentences only (training/presets/generate-zh.yaml).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.harness import Server, wait_serving  # noqa: E402
from service.client import SeqserveClient  # noqa: E402

# nationality -> the language words accepted for it (the first is the one shown). All six
# nationalities (X人) and first language words occur in the training text (the counts are printed).
PAIRS = {
    "中国": ("中文", "汉语"),
    "英国": ("英文", "英语"),
    "美国": ("英语", "英文"),
    "日本": ("日语", "日文"),
    "法国": ("法语", "法文"),
    "德国": ("德语", "德文"),
}
ENGLISH = {"中国": "China → Chinese", "英国": "Britain → English", "美国": "America → English",
           "日本": "Japan → Japanese", "法国": "France → French", "德国": "Germany → German"}  # matplotlib's fonts lack CJK
SUBJECTS = ("我", "他", "她")
VERBS = ("说", "会说")


def templates(country: str) -> list[str]:
    return [f"{s}是{country}人，{s}{v}" for s in SUBJECTS for v in VERBS]


def languages() -> list[str]:
    return list(dict.fromkeys(w for accepted in PAIRS.values() for w in accepted))


def judge(scores: dict[str, float], accepted: tuple[str, ...]) -> tuple[bool, float, str]:
    """(right, margin, best word): margin = log P(best accepted) - log P(best other)."""
    best = max(scores, key=scores.get)
    good = max(scores[w] for w in accepted)
    other = max(v for w, v in scores.items() if w not in accepted)
    return good > other, good - other, best  # a tie is not right


def score(client: SeqserveClient, model: str, prompt: str, words: list[str]) -> dict[str, float]:
    result = client.score(prompt, words, model=model)
    return {s.text: s.logprob for s in result.scores}


def training_counts(bundle: Path, words: list[str]) -> dict[str, int] | None:
    """How often each word occurs in the model's training text (None without the training extra or data)."""
    try:
        from training import data as D
    except ImportError as err:
        print(f"(training-data counts skipped: {err})", file=sys.stderr)
        return None
    from service.contract import read_manifest

    try:
        cfg = D.DataConfig.from_dict(read_manifest(bundle).training["run_config"]["data"], "generate")
        text = D.lm_text(cfg, "train", None)
    except (D.DataError, OSError, KeyError, ValueError) as err:
        print(f"(training-data counts skipped: {err})", file=sys.stderr)
        return None
    return {w: text.count(w) for w in words}


def evaluate(client: SeqserveClient, model: str) -> dict:
    words = languages()
    rows = []
    # The prior of each language word with the nationality cut away ("{S}{V}" alone): how much the
    # nationality moves each word is log P(word | full) - log P(word | prior), the pointwise mutual
    # information; the memory the lecture asks about shows there even where a frequent word wins.
    priors = {f"{s}{v}": score(client, model, f"{s}{v}", words) for s in SUBJECTS for v in VERBS}
    for country, accepted in PAIRS.items():
        results = []
        for s in SUBJECTS:
            for v in VERBS:
                prompt = f"{s}是{country}人，{s}{v}"
                scores = score(client, model, prompt, words)
                right, margin, best = judge(scores, accepted)
                shift = {w: scores[w] - priors[f"{s}{v}"][w] for w in words}
                pmi_right, pmi_margin, pmi_best = judge(shift, accepted)
                results.append({"prompt": prompt, "right": right, "margin": margin, "best": best,
                                "pmi_right": pmi_right, "pmi_margin": pmi_margin, "pmi_best": pmi_best, "scores": scores})
        rows.append({"nationality": f"{country}人", "language": accepted[0], "accepted": list(accepted),
                     "right": sum(r["right"] for r in results), "of": len(results),
                     "mean_margin": sum(r["margin"] for r in results) / len(results),
                     "min_margin": min(r["margin"] for r in results),
                     "pmi_right": sum(r["pmi_right"] for r in results),
                     "mean_pmi_margin": sum(r["pmi_margin"] for r in results) / len(results), "templates": results})
    # the lecture's own sentence, as the issue asks it: 中文 against 英文 only
    headline = {c: score(client, model, f"我是{c}人，我说", ["中文", "英文"]) for c in ("中国", "英国")}
    cuts = {}
    for country, accepted in PAIRS.items():
        prompt = f"我是{country}人，我说"
        cuts[country] = [{"context": prompt[k:], "margin": judge(score(client, model, prompt[k:], words), accepted)[1]}
                         for k in range(len(prompt))]
    return {"model": model, "languages": words, "pairs": rows, "headline": headline, "cuts": cuts}


def print_table(report: dict, counts: dict[str, int] | None) -> None:
    print(f"model {report['model']}; candidates: {' '.join(report['languages'])}")
    print("| nationality | language | right | mean margin (nats) | worst margin | right by PMI | mean PMI margin | "
          "train count (nationality / language) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    total = right = pmi = 0
    for r in report["pairs"]:
        count = "" if counts is None else f"{counts[r['nationality']]} / {counts[r['language']]}"
        print(f"| {r['nationality']} | {r['language']} | {r['right']}/{r['of']} | {r['mean_margin']:+.2f} | "
              f"{r['min_margin']:+.2f} | {r['pmi_right']}/{r['of']} | {r['mean_pmi_margin']:+.2f} | {count} |")
        total, right, pmi = total + r["of"], right + r["right"], pmi + r["pmi_right"]
    print(f"\nright: {right}/{total} = {right / total:.0%} of templates "
          f"({sum(r['right'] == r['of'] for r in report['pairs'])}/{len(report['pairs'])} nationalities always right); "
          f"by PMI (the nationality's effect, the prior removed): {pmi}/{total} = {pmi / total:.0%}")
    for country, s in report["headline"].items():
        p = math.exp(s["中文"]) / (math.exp(s["中文"]) + math.exp(s["英文"]))
        print(f"Score(\"我是{country}人，我说\", [\"中文\", \"英文\"]): log P 中文 {s['中文']:.2f}, 英文 {s['英文']:.2f} "
              f"-> P(中文 | one of the two) = {p:.2f}")
    for r in report["pairs"]:
        for t in r["templates"]:
            if not t["right"]:
                print(f"wrong: {t['prompt']} -> {t['best']} (margin {t['margin']:+.2f})")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for country, points in report["cuts"].items():
        ax.plot(range(len(points)), [p["margin"] for p in points], marker="o", label=ENGLISH[country])
    ax.axhline(0, color="grey", lw=0.8)
    n = len(next(iter(report["cuts"].values())))
    ax.set_xticks(range(n))
    ax.set_xticklabels([str(k) for k in range(n)])
    ax.set_xlabel("characters cut from the front of 'wo shi X ren, wo shuo' (8 characters; the last point: 'shuo' alone)")
    ax.set_ylabel("log P(right language) − log P(best other), nats")
    ax.set_title(f"{report['model']}: how far back the model remembers the nationality")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", default="", help="a running server (default: start one over --models)")
    p.add_argument("--models", default=str(REPO / "models"), help="model repository for the server this starts")
    p.add_argument("--model", default="generate-zh", help="the Chinese language model")
    p.add_argument("--plot", default="", help="write the context-cutting plot here (PNG)")
    p.add_argument("--json", default="", help="write every score here")
    args = p.parse_args(argv)
    server = None
    address = args.address
    if not address:  # the benchmarks' way of running a server on a free loopback port, until SERVING
        server = Server("seqserve", [sys.executable, "-m", "service.client.cli", "serve", "--models", args.models,
                                     "--port", "0", "--metrics-port", "0"])
        address = server.address
    try:
        wait_serving(address)
        with SeqserveClient(address, timeout=60) as client:
            report = evaluate(client, args.model)
    finally:
        if server is not None:
            server.stop()
    counts = training_counts(Path(args.models) / args.model / "1",
                             [r["nationality"] for r in report["pairs"]] + [r["language"] for r in report["pairs"]])
    report["training_counts"] = counts
    print_table(report, counts)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    if args.plot:
        plot(report, Path(args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
