"""Encoding speed of the sentence encoder (pipeline/encoder.py) on the real test split:
documents per second for float32 and int8 at a few `max_len`, and how far int8 strays from
float32 (cosine of the two embeddings of each document). Prints a table; run on a quiet machine
after `dvc repro prepare fetch_encoder` (it reads data/prepared/test.parquet and data/encoder by default).

    python -m bench.encoder_speed --docs 1024 --max-len 64 128
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pandas as pd

from pipeline.encoder import SentenceEncoder


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="data/encoder", help="the encoder's files: a directory or .zip (fetch_encoder's output)")
    parser.add_argument("--data", default="data/prepared/test.parquet", help="a prepared split (its text column)")
    parser.add_argument("--docs", type=int, default=1024, help="the first N documents")
    parser.add_argument("--max-len", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    texts = pd.read_parquet(args.data)["text"].head(args.docs).tolist()
    print(f"{len(texts)} documents of {args.data}, batch {args.batch_size}, source {args.source}")
    print("| max_len | weights | docs/s | s | cosine to float32: min | mean |")
    print("|---:|---|---:|---:|---:|---:|")
    for max_len in args.max_len:
        exact = None
        for quantize in (False, True):
            encoder = SentenceEncoder(args.source, max_len, quantize, args.batch_size).fit()
            encoder.transform(texts[:8])  # session start-up is not encoding
            start = time.perf_counter()
            emb = encoder.transform(texts)
            seconds = time.perf_counter() - start
            exact = emb if exact is None else exact
            cosine = np.sum(emb * exact, axis=1)
            print(f"| {max_len} | {'int8' if quantize else 'float32'} | {len(texts) / seconds:.1f} | {seconds:.1f} "
                  f"| {cosine.min():.4f} | {cosine.mean():.4f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
