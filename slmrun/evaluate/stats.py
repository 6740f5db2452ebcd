"""The summary figures of a perplexity / KL divergence run, computed as llama-perplexity
prints them (tools/perplexity/perplexity.cpp, ``kl_divergence``): means and their
uncertainties in double, the KL divergence's median and percentiles over the per-token
values kept as float and sorted, with its float interpolation. Pure functions over
numpy arrays; no llama.cpp here.
"""

from __future__ import annotations

import math


def mean_and_uncertainty(values) -> tuple[float, float]:
    """(mean, standard error of the mean) as llama-perplexity's ``mean_and_uncertainty``
    (0 for the error below 11 values)."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n < 1:
        return 0.0, 0.0
    mean = float(values.sum() / n)
    var = float((values * values).sum() / n) - mean * mean
    return mean, (math.sqrt(var / (n - 1)) if var > 0 and n > 10 else 0.0)


def percentile(sorted_values, fraction: float) -> float:
    """llama-perplexity's percentile: linear interpolation at fraction x (n - 1), in float."""
    import numpy as np

    f32 = np.float32
    n = len(sorted_values)
    if fraction <= 0:
        return float(sorted_values[0])
    if fraction >= 1:
        return float(sorted_values[-1])
    p = f32(fraction) * f32(n - 1)
    ip = int(p)
    p = f32(p - f32(ip))
    return float((f32(1) - p) * f32(sorted_values[ip]) + p * f32(sorted_values[min(ip + 1, n - 1)]))


def median(sorted_values) -> float:
    """The middle value, or the mean of the two middle values (in float, as llama-perplexity)."""
    import numpy as np

    n = len(sorted_values)
    if n % 2:
        return float(sorted_values[n // 2])
    return float(np.float32(0.5) * (np.float32(sorted_values[n // 2]) + np.float32(sorted_values[n // 2 - 1])))


def summarize(nll, ref_nll=None, kld=None, same_top=None) -> dict:
    """The figures of one model over the scored tokens: perplexity (and its uncertainty);
    with a reference, the reference's, ln(PPL ratio), KL divergence (mean, its uncertainty,
    median, p99, max) and the top-1 agreement (a fraction)."""
    import numpy as np

    log_ppl, log_ppl_unc = mean_and_uncertainty(nll)
    ppl = math.exp(log_ppl)
    out = {"n_tokens": int(len(nll)), "perplexity": ppl, "perplexity_uncertainty": ppl * log_ppl_unc}
    if ref_nll is None:
        return out
    ref_log_ppl, ref_unc = mean_and_uncertainty(ref_nll)
    ref_ppl = math.exp(ref_log_ppl)
    values = np.sort(np.asarray(kld, dtype=np.float32))  # llama-perplexity keeps them as float
    kld_mean, kld_unc = mean_and_uncertainty(kld)
    agree = float(np.count_nonzero(same_top)) / len(same_top)
    n = len(nll)
    # ln(PPL ratio)'s uncertainty with the covariance of the two log-likelihoods (as llama-perplexity).
    cov = 0.0
    if n >= 10:
        a, b = np.asarray(nll, dtype=np.float64), np.asarray(ref_nll, dtype=np.float64)
        cov = (float((a * b).sum()) / n - (a.sum() / n) * (b.sum() / n)) / (n - 1)
    ratio_unc = math.sqrt(max(0.0, log_ppl_unc ** 2 + ref_unc ** 2 - 2 * cov))
    out.update({
        "reference_perplexity": ref_ppl, "reference_perplexity_uncertainty": ref_ppl * ref_unc,
        "ln_ppl_ratio": log_ppl - ref_log_ppl, "ln_ppl_ratio_uncertainty": ratio_unc,
        "kl_divergence": {"mean": kld_mean, "uncertainty": kld_unc, "median": median(values),
                          "p99": percentile(values, 0.99), "max": float(values[-1])},
        "top1_agreement": agree,
        "top1_agreement_uncertainty": math.sqrt(agree * (1 - agree) / (n - 1)) if n > 1 else 0.0,
    })
    return out
