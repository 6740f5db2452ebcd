"""`slmrun quantize SRC --to TYPE`: a new quant of a model, by llama.cpp's quantizer, into the store."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from ..units import format_bytes
from . import app


@app.command()
def quantize(
    source: str = typer.Argument(..., help="The model to quantize: NAME:QUANT in the store, or a .gguf path "
                                           "(best an F16, BF16 or F32 one)."),
    to: str = typer.Option(..., "--to", help="The type to make: Q2_K, Q3_K_S/M/L, Q4_0, Q4_1, Q4_K_S/M, Q5_0, Q5_1, "
                                             "Q5_K_S/M, Q6_K, Q8_0, F16, BF16, F32."),
    allow_requantize: bool = typer.Option(False, "--allow-requantize",
                                          help="Quantize an already quantized source (its loss adds to the new one's)."),
    name: Optional[str] = typer.Option(None, "--name", help="The store name for a .gguf path (default: its file "
                                                            "name up to the first dot)."),
    imatrix: Optional[Path] = typer.Option(None, "--imatrix", help="An importance matrix (llama-imatrix's GGUF) "
                                                                   "to weight the quantization by."),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="Threads (default: the physical cores)."),
    force: bool = typer.Option(False, "--force", help="Replace the quant if the store already has it."),
):
    """Make a new quant of a model with llama.cpp's quantizer, into the store.

    `slmrun quantize mymodel:f16 --to Q4_K_M` adds mymodel:q4_k_m (validated, atomically;
    nothing is left behind if it fails)."""
    from ..quantizer import quantize as do_quantize
    from .output import Progress

    t0 = time.perf_counter()
    progress = Progress()

    def step(done: int, total: int, tensor: str) -> None:  # a twentieth at a time: 272 lines would drown a log
        if done == total or done % max(1, total // 20) == 0:
            progress(done, total, f"tensors ({tensor})")
    try:
        m = do_quantize(source, to, allow_requantize=allow_requantize, name=name, imatrix=imatrix,
                        n_threads=threads, force=force, progress=step,
                        warn=lambda message: typer.echo(f"Warning: {message}", err=True))
    finally:
        progress.close()
    typer.echo(f"quantized {source} to {m.ref} ({format_bytes(m.size)}, sha256 {m.sha256[:12]}…) "
               f"in {time.perf_counter() - t0:.1f}s: {m.path}")
