"""Copy reproduced figures into the documentation.

    mithridate reproduce paper000-wine-features --out results/paper000-wine-features
    python docs/collect_figures.py results

copies every PNG and the summary.md of each figure folder under RESULTS into
docs/figures/<figure>/, where the paper pages include them. Only the figures
the pages show are copied (FIGURES below).
"""
import argparse
import shutil
from pathlib import Path

FIGURES = ("quickstart", "paper000-wine-features", "paper000-wine-labels",
           "paper000-boston-features", "paper000-adult-labels", "paper000-boston-sensitivity",
           "paper002-fig1", "paper002-fig2-mnist")
DEST = Path(__file__).resolve().parent / "figures"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="folder holding one output folder per figure")
    args = parser.parse_args(argv)
    for name in FIGURES:
        src = args.results / name
        files = sorted(src.glob("*.png")) + sorted(src.glob("summary.md"))
        if not files:
            print(f"{name}: nothing in {src}, skipped")
            continue
        (DEST / name).mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy2(f, DEST / name / f.name)
        print(f"{name}: {len(files)} files")


if __name__ == "__main__":
    main()
