"""`slmrun hw | plan`: the machine, and what it can run."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Optional

import typer

from ..units import format_bytes
from . import app
from .rpc import rpc_option


def _size(n: int | None) -> str:
    return format_bytes(n, unknown="unknown")


def _llama_features() -> list[str] | None:
    """CPU features the installed llama.cpp build uses (None when llama_cpp cannot load)."""
    try:
        from ..hardware import parse_llama_system_info
        from ..runtime import system_info
        return list(parse_llama_system_info(system_info()))
    except Exception:  # a broken llama_cpp install must not break `slmrun hw`
        return None


@app.command()
def hw(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    measure: bool = typer.Option(False, "--measure",
                                 help="Measure the memory bandwidth now if it is not cached yet (~1 s)."),
    rpc: Optional[str] = rpc_option(),
):
    """Show this machine: CPU, cores, SIMD features, memory, disk and memory bandwidth (and with
    --rpc, what each RPC server offers)."""
    from .. import config, hardware

    profile = hardware.detect(measure_bandwidth=measure)
    d = profile.to_dict()
    d["llama_cpp_features"] = _llama_features()
    d["store"] = str(config.models_dir())
    devices = _rpc_devices(rpc)
    if devices is not None:
        d["rpc_devices"] = [{"name": x.name, "free_bytes": x.free_bytes, "total_bytes": x.total_bytes,
                             "budget_bytes": x.budget} for x in devices]
    if as_json:
        typer.echo(json.dumps(d, indent=2))
        return
    cores = f"{profile.logical_cores} logical, {profile.physical_cores} physical, " \
            f"{profile.performance_cores} performance"
    if profile.clusters:
        # cpufreq's kHz, or sysfs's cpu_capacity (1024 = the fastest core) when that tells cores apart
        speeds = [f"{n} @ {speed / 1e6:.1f} GHz" if speed > 100_000 else f"{n} @ capacity {speed}"
                  for speed, n in profile.clusters]
        cores += f" (clusters: {', '.join(speeds)})"
    if profile.cpu_quota:
        cores += f"; cgroup CPU quota {profile.cpu_quota:g} -> {profile.usable_cores} threads"
    memory = f"{_size(profile.ram_total)} total, {_size(profile.ram_available)} available"
    if profile.cgroup_limit is not None:
        memory += f"; cgroup limit {_size(profile.cgroup_limit)}"
    memory += f"; usable now {_size(profile.memory_available)}"
    features = d["llama_cpp_features"]
    bandwidth = (f"{profile.bandwidth_gbs:.1f} GB/s (cached)" if profile.bandwidth_gbs
                 else "not measured (run `slmrun hw --measure`)")
    rows = [
        ("architecture", profile.arch),
        ("cpu", profile.cpu_model),
        ("cores", cores),
        ("simd (os)", " ".join(profile.simd) or "none"),
        ("simd (llama.cpp)", " ".join(features) if features is not None else "unknown (llama_cpp did not load)"),
        ("memory", memory),
        ("swap", _size(profile.swap_total)),
        ("raspberry pi", profile.pi_model or "no"),
        ("disk free", f"{_size(profile.disk_free)} at {d['store']}"),
        ("bandwidth", bandwidth),
    ]
    if devices is not None:
        from .. import remote
        rows += [("rpc", line) for line in remote.describe_devices(remote.endpoints(rpc), devices)]
    from .output import echo_table

    echo_table(None, rows)


def _rpc_devices(rpc: str | None):
    if rpc is None:
        return None
    from .. import remote
    return remote.remote_devices(remote.endpoints(rpc))


def _target(profile: str | None, ram: str | None, cores: int | None, arch: str | None):
    """The HardwareProfile to plan for: a named profile, a described device, or this machine."""
    from .. import hardware
    from ..errors import InvalidArgumentError

    base = hardware.profile(profile) if profile else None
    if ram is None and cores is None and arch is None:
        if base is not None:
            return base
        hw = hardware.detect()
        if hw.bandwidth_gbs is None:  # measured once, then cached in SLMRUN_HOME/hardware.json
            hw = hardware.detect(measure_bandwidth=True)
        features = _llama_features()
        if features:  # which fast kernels exist here is the build's business, not the CPU's alone
            hw = replace(hw, simd=tuple(features))
        return hw
    if base is None and ram is None:
        raise InvalidArgumentError("--cores/--arch describe another device and need --ram too",
                                   hint="Example: slmrun plan tinyllama --ram 4G --cores 4 --arch aarch64, "
                                        "or name a device with --profile rpi4-4gb.")
    size = hardware.parse_size(ram) if ram is not None else base.ram_total
    n_cores = cores if cores is not None else (base.logical_cores if base is not None else 4)
    return hardware.custom(ram=size, cores=n_cores, arch=arch, base=base)


@app.command("plan")
def plan_cmd(
    model: str = typer.Argument(..., help="A registry NAME (or NAME:QUANT), or a path to a .gguf file."),
    ctx: Optional[int] = typer.Option(None, "--ctx", "-c", help="Context size (default: the model's, capped "
                                                                 "by SLMRUN_MAX_CTX)."),
    min_speed: float = typer.Option(5.0, "--min-speed", help="Tokens/s a pick must reach."),
    quant: Optional[str] = typer.Option(None, "--quant", "-q", help="Use this quant whatever the rules say."),
    force: bool = typer.Option(False, "--force", help="Plan even when nothing fits (with a warning)."),
    kv_type: str = typer.Option("f16", "--kv-type", help="KV cache type: f16, q8_0 or q4_0."),
    ram: Optional[str] = typer.Option(None, "--ram", help="Plan for a device with this much memory, e.g. 4G."),
    cores: Optional[int] = typer.Option(None, "--cores", help="... and this many cores."),
    arch: Optional[str] = typer.Option(None, "--arch", help="... and this architecture (aarch64, x86_64)."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Plan for a named device: rpi4-2gb, rpi4-4gb, "
                                                                  "rpi4-8gb, rpi5-8gb, laptop-8gb, ..."),
    parallel: Optional[int] = typer.Option(None, "--parallel", help="Plan for this many requests at once "
                                           "(default: as many slots as fit, up to 4)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    rpc: Optional[str] = rpc_option(),
):
    """Compare every quant of a model on this machine (or another): memory, speed, quality, and the pick.
    MODEL is a registry name, an imported model (its local files) or a .gguf path. With --rpc, plans
    the model split across this machine and the servers, each share fitted to its memory."""
    from .. import planner
    from ..api import plan_target
    from ..evaluate.results import measured_kld

    target, ref_quant = plan_target(model)
    hw = _target(profile, ram, cores, arch)
    p = planner.plan(target, hw, n_ctx=ctx, min_speed=min_speed, quant=quant or ref_quant, force=force,
                     type_k=kv_type, type_v=kv_type, n_parallel=parallel, devices=_rpc_devices(rpc),
                     measured=measured_kld(target))
    if as_json:
        typer.echo(json.dumps(p.to_dict(), indent=2))
        return
    _print_plan(p, hw)


def _print_embedding_plan(p, hw) -> None:
    """An embedding model's plan: memory and fidelity; no generation speed, no KV cache."""
    from ..planner.embedding import fidelity
    from .output import echo_table

    typer.echo(f"{p.model} on {hw.name} ({hw.arch}, {hw.performance_cores} performance cores): "
               f"budget {format_bytes(p.budget_bytes)}, texts of up to {p.n_ctx} tokens (an embedding model)")
    typer.echo("")
    echo_table(("", "QUANT", "FILE", "MEMORY", "EMBEDDINGS", "FITS"),
               [("*" if o.quant == p.quant else "", o.quant, ("~" if o.size_is_estimate else "") + format_bytes(o.size),
                 format_bytes(o.estimated_bytes), fidelity(o.quant), "yes" if o.fits else "no") for o in p.options])
    typer.echo("")
    typer.echo(f"Pick: {p.quant} — ~{format_bytes(p.estimated_bytes)}, {p.n_threads} threads; up to {p.n_parallel} "
               f"text{'s' if p.n_parallel != 1 else ''} of up to {p.n_ctx} tokens in a batch")
    for reason in p.reasons:
        typer.echo(f"  - {reason}")
    for warning in p.warnings:
        typer.echo(f"Warning: {warning}", err=True)
    typer.echo("Memory = weights + a batch's work + runtime (estimates; no KV cache). Embeddings = fidelity to the "
               "F32 model's vectors. No chat and no token rate: the model reads a text once and returns a vector.")


def _print_plan(p, hw) -> None:
    if p.embedding_model:
        return _print_embedding_plan(p, hw)
    bandwidth = f"{p.bandwidth_gbs:g} GB/s" if p.bandwidth_gbs else "bandwidth unknown"
    typer.echo(f"{p.model} on {hw.name} ({hw.arch}, {hw.performance_cores} performance cores, {bandwidth}): "
               f"budget {format_bytes(p.budget_bytes)}, n_ctx {p.n_ctx}, KV cache {p.type_k}")
    typer.echo("")
    from .output import echo_table

    rows = []
    for o in p.options:
        rows.append((
            "*" if o.quant == p.quant else "",
            o.quant,
            ("~" if o.size_is_estimate else "") + format_bytes(o.size),
            format_bytes(o.estimated_bytes),
            f"{o.estimated_tps:.1f} tok/s" + ("" if o.fast_enough else " (slow)"),
            f"{o.kld:.4f} {o.quality}" if o.kld is not None else "unknown",
            "yes" if o.fits else "no",
            "fast" if o.fast_kernel else "",
        ))
    echo_table(("", "QUANT", "FILE", "MEMORY", "SPEED", "KL DIVERGENCE", "FITS", "KERNEL"), rows)
    typer.echo("")
    typer.echo(f"Pick: {p.quant} — ~{format_bytes(p.estimated_bytes)}, ~{p.estimated_tps:.1f} tok/s, "
               f"{p.n_threads} threads; {p.n_parallel} parallel slot{'s' if p.n_parallel != 1 else ''} "
               f"of {p.n_ctx} tokens, ~{format_bytes(p.parallel_bytes)} with all of them")
    for reason in p.reasons:
        typer.echo(f"  - {reason}")
    if p.split is not None:
        typer.echo("")
        echo_table(("DEVICE", "BLOCKS", "OUTPUT", "NEEDS", "BUDGET", "FITS"),
                   [(s.device, str(s.blocks), "yes" if s.output else "", format_bytes(s.need_bytes),
                     format_bytes(s.budget_bytes), "yes" if s.fits else "no") for s in p.split])
    for warning in p.warnings:
        typer.echo(f"Warning: {warning}", err=True)
    typer.echo("Memory = weights + KV cache + compute + runtime; speed from memory bandwidth (estimates).")
    sources = {o.quality for o in p.options}
    typer.echo("KL divergence = what a quant loses against full precision, nats per token, lower is better: "
               + ("measured by `slmrun eval`" if "measured" in sources else "")
               + ("; " if "measured" in sources and sources - {"measured"} else "")
               + ("scaled: llama.cpp's Llama-3-8B figure times this model's measured loss" if "scaled" in sources
                  else "borrowed: llama.cpp's figure for Llama-3-8B (`slmrun eval` measures this model's)"
                  if "borrowed" in sources else "") + ".")
