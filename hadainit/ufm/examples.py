"""Kept initializations that show the edges of the theory (SPEC section 5).

Each is a balanced or unbalanced initial spectrum in the walsh basis, mode 0
first. The tests check what each comment claims; the validation run plots them.
"""

from __future__ import annotations

import torch

#: K = 8, balanced (a = b = sqrt(lam)): two modes a thousand times smaller than
#: the other five. The five large modes grow fastest in absolute terms at first,
#: so lam_bar turns *away* from the NC direction: etf_angle rises by about 0.035
#: before converging, while the KL Lyapunov value decreases all the time.
ETF_ANGLE_RISE_K8 = torch.tensor([1.0, 1e-3, 1e-3, 1.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)

#: K = 4, unbalanced: mode 3 has a = 10, b = 0.2 (lam = 2, the largest), the
#: others a = b = 1. Since dlam_i/dt = (1 - mu_i)(a_i^2 + b_i^2)/K, the already
#: largest mode grows about 50 times faster than balance would allow and
#: V rises from 0.066 to about 0.30: V is not a Lyapunov function off balance.
UNBALANCED_V_RISE_A = torch.tensor([0.0, 1.0, 1.0, 10.0], dtype=torch.float64)
UNBALANCED_V_RISE_B = torch.tensor([0.0, 1.0, 1.0, 0.2], dtype=torch.float64)
