"""An independent dense float64 reference for SPEC section 6, written straight from the formulas.

Everything in memory, plain loops over classes, samples and pairs; a d x d
pseudo-inverse for NC1 (what the library avoids); every K x K matrix formed.
Used only by the tests. Sources of the quantities beyond SPEC 6:

* ``nc1_trace = Tr(Sigma_W) / Tr(Sigma_B)``: Tirer, Huang, Niles-Weed (2023), "Perturbation analysis of
  neural collapse", ICML.
* ``gnc2_log``, ``gnc2_riesz``: hyperspherical energies of the normalized centred class means, the mean over
  pairs of ``log(1 / ||u_k - u_l||)`` and of ``||u_k - u_l||^(-s)`` (s = 1 here): Liu et al. (2023),
  "Generalizing and decoupling neural collapse via hyperspherical uniformity gap", ICLR.
* ``unc3``: the spread (population std) over classes of ``cos(w_k, mu_k - mu_G)``, uniform duality after
  Wu & Papyan (2024), "Linguistic collapse: neural collapse in (large) language models", NeurIPS.
* per-class CDNV (Galanti et al. 2022) and per-class duality distances ``reference_per_class``.
"""

import itertools
import math

import torch


def reference_metrics(features, labels, weight=None, bias=None, *, global_mean="unweighted", basis=None):
    x = features.to(torch.float64)
    k = int(labels.max()) + 1 if weight is None else weight.shape[0]
    classes = [c for c in range(k) if (labels == c).any()]
    kk = len(classes)
    means = torch.stack([x[labels == c].mean(0) for c in classes])
    if global_mean == "unweighted":
        mu_g = means.mean(0)
    else:
        mu_g = x.mean(0)
    m = means - mu_g
    n, d = x.shape
    sigma_w = torch.zeros(d, d, dtype=torch.float64)
    for i in range(n):
        row = classes.index(int(labels[i]))
        diff = x[i] - means[row]
        sigma_w += torch.outer(diff, diff)
    sigma_w /= n
    sigma_b = m.T @ m / kk
    out = {"nc1": torch.trace(sigma_w @ torch.linalg.pinv(sigma_b, hermitian=True)).item() / kk}
    out["nc1_trace"] = (torch.trace(sigma_w) / torch.trace(sigma_b)).item()

    def cv(v):
        return (v.std(correction=0) / v.mean()).item()

    def cos_stats(rows):
        cosines = []
        for a, b in itertools.permutations(range(kk), 2):
            cosines.append((rows[a] @ rows[b] / (rows[a].norm() * rows[b].norm())).item())
        cosines = torch.tensor(cosines, dtype=torch.float64)
        return cosines.std(correction=0).item(), (cosines + 1 / (kk - 1)).abs().mean().item()

    etf = (torch.eye(kk, dtype=torch.float64) - torch.ones(kk, kk, dtype=torch.float64) / kk) / math.sqrt(kk - 1)

    def gap(g):
        return (g / g.norm() - etf).norm().item()

    out["equinorm_means"] = cv(m.norm(dim=1))
    out["cos_std_means"], out["cos_etf_means"] = cos_stats(m)
    out["etf_gap_means"] = gap(m @ m.T)
    variances = [((x[labels == c] - means[j]) ** 2).sum(1).mean().item() for j, c in enumerate(classes)]
    cdnv = []
    for a, b in itertools.permutations(range(kk), 2):
        cdnv.append((variances[a] + variances[b]) / (2 * ((means[a] - means[b]) ** 2).sum().item()))
    out["cdnv"] = sum(cdnv) / len(cdnv)
    log_energy, riesz_energy = [], []
    for a, b in itertools.permutations(range(kk), 2):
        distance = (m[a] / m[a].norm() - m[b] / m[b].norm()).norm().item()
        log_energy.append(math.log(1 / distance))
        riesz_energy.append(1 / distance)
    out["gnc2_log"] = sum(log_energy) / len(log_energy)
    out["gnc2_riesz"] = sum(riesz_energy) / len(riesz_energy)
    out["within_class_trace"] = torch.trace(sigma_w).item()
    if weight is not None:
        w_all = weight.to(torch.float64)
        w = w_all[classes]
        out["equinorm_classifier"] = cv(w.norm(dim=1))
        out["cos_std_classifier"], out["cos_etf_classifier"] = cos_stats(w)
        out["etf_gap_classifier"] = gap(w @ w.T)
        out["nc3"] = (w / w.norm() - m / m.norm()).norm().item()
        out["nc3_duality"] = gap(w @ m.T)
        duality_cosines = torch.tensor(
            [(w[j] @ m[j] / (w[j].norm() * m[j].norm())).item() for j in range(kk)], dtype=torch.float64
        )
        out["unc3"] = duality_cosines.std(correction=0).item()
        logits = x @ w_all.T + (0 if bias is None else bias.to(torch.float64))
        wrong = 0
        for i in range(n):
            dists = [((x[i] - means[j]) ** 2).sum().item() for j in range(kk)]
            nearest = classes[min(range(kk), key=lambda j: dists[j])]
            wrong += nearest != int(logits[i].argmax())
        out["nc4"] = wrong / n
        centre = torch.eye(kk, dtype=torch.float64) - 1 / kk
        sigma = torch.linalg.svdvals(centre @ w @ m.T @ centre)[: kk - 1]
        if kk - 1 > d:  # the logit matrix has rank <= d < K - 1
            out["kl_lyapunov"] = math.inf
        else:
            out["kl_lyapunov"] = math.log(sigma.mean().item()) - sigma.log().mean().item()
        if basis is not None:
            out.update(reference_drift(w_all, basis.left, basis.right))
    return out


def reference_drift(w, left, right):
    """SPEC 6 drift from projection matrices; the angle from scipy's subspace_angles."""
    import scipy.linalg

    w = w.to(torch.float64)
    core = left.T @ w @ right
    kept = left @ torch.diag(torch.diagonal(core)) @ right.T
    in_span = (left @ left.T) @ w @ (right @ right.T)
    r = right.shape[1]
    vh = torch.linalg.svd(w, full_matrices=False)[2][:r].T
    return {
        "drift": ((w - kept).norm() / w.norm()).item(),
        "drift_offdiag": ((core - torch.diag(torch.diagonal(core))).norm() / w.norm()).item(),
        "drift_out_of_span": ((w - in_span).norm() / w.norm()).item(),
        "drift_angle": float(scipy.linalg.subspace_angles(right.numpy(), vh.numpy()).max()),
    }


def reference_per_class(features, labels, weight=None):
    """Per-class CDNV (mean over the other classes) and duality distances ``||w_k/||W|| - m_k/||M|| ||``."""
    x = features.to(torch.float64)
    classes = sorted(set(labels.tolist()))
    kk = len(classes)
    means = torch.stack([x[labels == c].mean(0) for c in classes])
    m = means - means.mean(0)
    variances = [((x[labels == c] - means[j]) ** 2).sum(1).mean().item() for j, c in enumerate(classes)]
    cdnv = []
    for a in range(kk):
        pairs = [(variances[a] + variances[b]) / (2 * ((means[a] - means[b]) ** 2).sum().item())
                 for b in range(kk) if b != a]
        cdnv.append(sum(pairs) / len(pairs))
    out = {"classes": torch.tensor(classes), "cdnv": torch.tensor(cdnv, dtype=torch.float64)}
    if weight is not None:
        w = weight.to(torch.float64)[classes]
        out["duality"] = torch.stack([(w[j] / w.norm() - m[j] / m.norm()).norm() for j in range(kk)])
    return out


def mixture(k=4, d=6, n=12, seed=0, offset=3.0):
    """``n`` samples per class around ``k`` random means (scale ``offset``) in ``d`` dimensions, float64, and
    their labels (classes interleaved)."""
    gen = torch.Generator().manual_seed(seed)
    means = offset * torch.randn(k, d, generator=gen, dtype=torch.float64)
    labels = torch.arange(k * n) % k
    return means[labels] + torch.randn(k * n, d, generator=gen, dtype=torch.float64), labels
