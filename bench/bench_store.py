"""Lineage-store lookups at scale (goal: each under 10 ms at 100k renders).

Builds a store with N renders quickly (bulk inserts into the Store's own tables, made by its
own migrations: runs of 32 renders, a prompt per 4, five scores each, one real PNG file), then
times side by side, best of --repeats: `reverie lineage IMAGE.png`, lineage by a hash prefix,
best-of for a run, `reverie runs` and `reverie show`, printing ms and the ratio to the goal.

    python bench/bench_store.py [--renders 100000] [--repeats 20] [--home DIR] [--explain]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import tempfile
import time
from pathlib import Path

from reverie.store.db import Store
from reverie.store.lineage import find_renders, lineage
from reverie.types import RenderSpec, canonical_json

GOAL_MS = 10.0
PER_RUN = 32
PER_PROMPT = 4
SCORES = ("clip", "aesthetic", "pickscore", "heuristic")


def _hex(rng: random.Random) -> str:
    return "%064x" % rng.getrandbits(256)


def build(home: Path, renders: int, seed: int = 0) -> dict:
    """A store with `renders` rows; returns the run, the PNG and the sha the lookups ask for."""
    rng = random.Random(seed)
    store = Store(home)
    runs, prompts, rows, scores = [], [], [], []
    t0 = 1.7e9
    n_runs = max(1, -(-renders // PER_RUN))
    for r in range(n_runs):
        run_id = f"20250101-{r:06d}-{rng.getrandbits(24):06x}"
        runs.append((run_id, f"idea {r}", canonical_json({"idea": f"idea {r}"}), _hex(rng), "z-image-turbo", "tiny", r,
                     "done", "rounds", t0 + r, t0 + r + 1))
    prompt_id = render_id = 0
    for i in range(renders):
        run_id = runs[i // PER_RUN][0]
        if i % PER_PROMPT == 0:
            prompt_id += 1
            parent = prompt_id - 1 if i % PER_RUN else None
            prompts.append((prompt_id, run_id, parent, (i % PER_RUN) // PER_PROMPT, f"prompt {prompt_id}", "",
                            _hex(rng), "formula", "", "", "", t0 + i))
        render_id += 1
        spec = RenderSpec(prompt=f"prompt {prompt_id}", seed=i, width=256, height=256, steps=9, guidance=0.0,
                          profile="z-image-turbo")
        sha = _hex(rng)
        rows.append((render_id, run_id, prompt_id, (i % PER_RUN) // PER_PROMPT, i, spec.to_json(), spec.sha, sha,
                     f"images/{sha[:2]}/{sha}.png", 256, 256, "tiny", "tiny-v1", 0.5, "ok", "", t0 + i))
        values = [rng.random() for _ in SCORES]
        scores += [(render_id, name, v, "clip") for name, v in zip(SCORES, values)]
        scores.append((render_id, "composite", sum(values) / len(values), "clip"))
    with store.db.conn:
        c = store.db.conn
        c.executemany("insert into runs (id, idea, request_json, request_sha, profile, engine, base_seed, status, "
                      "stop_reason, created, finished) values (?,?,?,?,?,?,?,?,?,?,?)", runs)
        c.executemany("insert into prompts (id, run_id, parent_id, round, text, negative, text_sha, source, model, "
                      "system_hash, reason, created) values (?,?,?,?,?,?,?,?,?,?,?,?)", prompts)
        c.executemany("insert into renders (id, run_id, prompt_id, round, seed, spec_json, spec_sha, sha256, path, "
                      "width, height, engine, engine_version, seconds, status, error, created) "
                      "values (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        c.executemany("insert into scores (render_id, name, value, scorer) values (?,?,?,?)", scores)
    c.execute("analyze")
    # One real image file, so `reverie lineage IMAGE.png` runs its whole path (hashing the file too).
    target = rows[len(rows) // 2]
    png = _tiny_png()
    sha = hashlib.sha256(png).hexdigest()
    path = home / "images" / sha[:2] / f"{sha}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    with store.db.conn:
        c.execute("update renders set sha256 = ?, path = ? where id = ?", [sha, str(path.relative_to(home)), target[0]])
    store.close()
    return {"run_id": target[1], "png": path, "sha": sha, "renders": renders, "runs": n_runs}


def _tiny_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 80, 40)).save(buf, format="PNG")
    return buf.getvalue()


def best_ms(fn, repeats: int) -> float:
    fn()  # warm the page cache and the statement cache
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def lookups(store: Store, built: dict) -> dict:
    def by_file():
        rows = find_renders(store, str(built["png"]))
        assert len(rows) == 1
        return lineage(store, rows[0])

    def by_prefix():
        rows = find_renders(store, built["sha"][:12])
        assert len(rows) == 1
        return lineage(store, rows[0])

    return {
        "lineage IMAGE.png": by_file,
        "lineage SHA-PREFIX": by_prefix,
        "best-of (top 4 of a run)": lambda: store.best(built["run_id"], 4),
        "runs (list 30)": lambda: store.list_runs(30),
        "show RUN (tree)": lambda: store.run_tree(built["run_id"]),
    }


def explain(store: Store, built: dict) -> None:
    """The query plans of the lookups' statements (SCAN = a full table walk; SEARCH = an index)."""
    run_id, sha = built["run_id"], built["sha"]
    for sql, params in [
        ("select * from renders where sha256 = ?", [sha]),
        ("select * from renders where (sha256 >= ? and sha256 < ?) or (spec_sha >= ? and spec_sha < ?)",
         [sha[:12], sha[:12] + "g"] * 2),
        ("select * from runs where id = ?", [run_id]),
        ("select * from runs order by created desc limit 30", []),
        ("select * from renders where run_id = ? order by id", [run_id]),
        # A run's renders with their scores (Store.renders), in one statement.
        ("select renders.*, s.name from renders left join scores s on s.render_id = renders.id "
         "where renders.run_id = ? and renders.status = 'ok' order by renders.id", [run_id]),
    ]:
        plan = [r[-1] for r in store.db.conn.execute("explain query plan " + sql, params)]
        print(f"  {sql}\n    -> {'; '.join(plan)}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--renders", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--home", default=None, help="an empty folder for the store (default: a temp folder)")
    ap.add_argument("--explain", action="store_true", help="also print the query plans")
    args = ap.parse_args(argv)
    home = Path(args.home or tempfile.mkdtemp(prefix="reverie-bench-store-"))
    t0 = time.perf_counter()
    built = build(home, args.renders)
    print(f"store with {built['renders']} renders in {built['runs']} runs built in {time.perf_counter() - t0:.1f} s ({home})")
    store = Store(home)
    try:
        results = {name: best_ms(fn, args.repeats) for name, fn in lookups(store, built).items()}
        print(f"\n| lookup at {built['renders']} renders | best of {args.repeats} (ms) | / {GOAL_MS:g} ms goal |")
        print("|---|---:|---:|")
        for name, ms in results.items():
            print(f"| {name} | {ms:.2f} | {ms / GOAL_MS:.2f} |")
        if args.explain:
            print("\nquery plans:")
            explain(store, built)
    finally:
        store.close()
    return results


if __name__ == "__main__":
    main()
