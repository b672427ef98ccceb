"""`ncf-recommend`: the top-k movies for one user, from an exported model.

    ncf-recommend --model DIR --user ID [--k 10] [--titles FILE]

DIR is a run's model/ folder (or its saved_model/ folder), local or gs://; it is copied to a
temporary folder through protocol.storage first (TensorFlow never opens gs:// itself; a local
model is copied as well, so both take one path). ID is the dataset's raw user id (MovieLens' own number). It prints one line per
movie: rank, movie id, score (the predicted probability of a rating) and, with --titles,
the title: ml-100k's `u.item` (pipe-separated, latin-1), ml-1m's `movies.dat` (`::`),
ml-20m's `movies.csv`, or RecBole's `ml-100k.item` (the companion of its `.inter` file).
Movies the user rated in training are never recommended (ml-20mx16x32 and
synthetic-20mx16x32 excepted: their training items are not in the model, see protocol.messages.IdMaps).
Exit 2 with a one-line message for an unknown user, a missing model, or k < 1.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import tempfile

from protocol import InvalidInput, storage
from protocol.cli import Parser, positive, run

from .export import check_model_dir
from .serving import DEFAULT_K


def _parser() -> Parser:
    p = Parser(prog="ncf-recommend", description="Top-k movies for a user from an exported NCF model.")
    p.add_argument("--model", required=True, help="a run's model/ folder (or model/saved_model/), local or gs://")
    p.add_argument("--user", required=True, help="the user's raw id (as in the ratings file)")
    p.add_argument("--k", type=positive(int), default=DEFAULT_K, help="how many movies (default %(default)s)")
    p.add_argument("--titles", help="movie titles: ml-100k u.item, ml-1m movies.dat, ml-20m movies.csv "
                                    "or RecBole's ml-100k.item")
    return p


def read_titles(url: str) -> dict[int, str]:
    """movie id -> title from one of MovieLens' item files (format recognized by its content)."""
    try:
        data = storage.read_bytes(url)
    except FileNotFoundError:
        raise InvalidInput(f"{url}: titles file not found") from None
    first = data.split(b"\n", 1)[0]
    titles: dict[int, str] = {}
    if first.startswith(b"movieId,"):  # ml-20m movies.csv: utf-8, quoted titles
        for row in csv.reader(io.StringIO(data.decode("utf-8", "replace"))):
            if row and row[0].isdigit() and len(row) >= 2:
                titles[int(row[0])] = row[1]
        return titles
    if first.startswith(b"item_id:token\tmovie_title"):  # RecBole's ml-100k.item, beside its .inter
        for line in data.decode("utf-8", "replace").splitlines()[1:]:
            fields = line.split("\t")
            if len(fields) >= 3 and fields[0].isdigit():
                titles[int(fields[0])] = f"{fields[1]} ({fields[2]})" if fields[2] else fields[1]
        return titles
    separator = "::" if b"::" in first else "|" if b"|" in first else None
    if separator is None:
        raise InvalidInput(f"{url}: not a MovieLens titles file (expected u.item, movies.dat or movies.csv)")
    for line in data.decode("latin-1").splitlines():  # u.item and movies.dat are latin-1
        fields = line.split(separator)
        if len(fields) >= 2 and fields[0].strip().isdigit():
            titles[int(fields[0])] = fields[1]
    return titles


def recommend(model_dir: str, user: int, k: int) -> list[tuple[int, float]]:
    """[(movie id, score)] best first, from the SavedModel in model_dir (a local folder)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(model_dir)
    if "recommend" not in loaded.signatures:
        raise InvalidInput(f"{model_dir}: the SavedModel has no 'recommend' signature (exported by an older version?)")
    out = loaded.signatures["recommend"](user=tf.constant([user], tf.int64), k=tf.constant(k, tf.int32))
    if not bool(out["known"].numpy()[0]):
        raise InvalidInput(f"user {user} is not in the model's training data (unknown user id)")
    items, scores = out["items"].numpy()[0], out["scores"].numpy()[0]
    return [(int(i), float(s)) for i, s in zip(items, scores) if i >= 0]


def main(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    try:
        user = int(args.user)
    except ValueError:
        raise InvalidInput(f"--user: expected an integer user id, got {args.user!r}") from None
    titles = read_titles(args.titles) if args.titles else {}
    if not storage.exists(args.model):
        raise InvalidInput(f"{args.model}: no such model folder")
    model_url = check_model_dir(args.model)
    with tempfile.TemporaryDirectory(prefix="ncf-recommend-") as tmp:
        storage.get_tree(model_url, tmp)
        picks = recommend(tmp, user, args.k)
    print(f"top {len(picks)} for user {user}:" if picks else f"no unrated movies left for user {user}")
    for rank, (item, score) in enumerate(picks, start=1):
        title = titles.get(item)
        print(f"{rank:3d}  {item:>7d}  {score:.4f}" + (f"  {title}" if title is not None else ""))
    sys.stdout.flush()


def console() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    run("recommend", lambda: main(sys.argv[1:]))


if __name__ == "__main__":
    console()
