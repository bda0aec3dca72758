"""Routing benchmark: prompts per second through ``Router.route_many`` after loading, on the CPU.

    .venv/bin/python benchmarks/routing.py [--n 1000] [--repeats 5]

Builds the router from two classes of the tiny CLIP (no study needed), routes N distinct
prompts several times, prints the median and worst time, and writes benchmarks/results/routing.json.
Target: 1,000 prompts well under a second after loading.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from autotune.results.recommendations_file import router_data
from autotune.serving.router import Router
from autotune.weights.clip import class_embedding, load_text_encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    t0 = time.perf_counter()
    encode = load_text_encoder("tiny")
    classes = {
        "portrait": class_embedding(encode, ["a studio portrait of an old fisherman", "a photo of a smiling child"]),
        "landscape": class_embedding(encode, ["a misty mountain lake at dawn", "a desert canyon under the stars"]),
    }
    data = router_data(classes, ("tiny", None))
    router = Router(data["centroids"], encode, data["threshold"])
    load = time.perf_counter() - t0
    prompts = [f"prompt {i}: a {['red', 'blue', 'old'][i % 3]} house by the sea, detail {i * 7}" for i in range(args.n)]
    router.route_many(prompts[:8])  # warm-up
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        router.route_many(prompts)
        times.append(time.perf_counter() - t)
    result = {
        "prompts": args.n,
        "load_seconds": round(load, 3),
        "median_seconds": round(statistics.median(times), 4),
        "worst_seconds": round(max(times), 4),
        "prompts_per_second": round(args.n / statistics.median(times)),
    }
    print(
        f"routing {args.n} prompts (tiny CLIP, CPU): median {result['median_seconds']:.3f} s, "
        f"worst {result['worst_seconds']:.3f} s, {result['prompts_per_second']} prompts/s; load {load:.2f} s"
    )
    out = Path(__file__).parent / "results" / "routing.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
