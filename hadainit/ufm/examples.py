"""Kept initializations that show the edges of the theory (SPEC section 5).

Each is a balanced or unbalanced initial spectrum in the walsh basis, mode 0
first. The tests check what each comment claims; the validation run plots them.
"""

from __future__ import annotations

import torch

#: K = 8, balanced (a = b = sqrt(lam)): modes 5, 6, 7 a hundred times smaller
#: than modes 1..4. The large modes grow fastest in absolute terms at first
#: (mode 4 fastest of all), so lam_bar turns *away* from the NC direction:
#: etf_angle rises from 0.238 to 0.259 (peak near t = 1e3), then falls back
#: below its start by t = 1e12, while the KL Lyapunov value decreases all the time.
#: (A search finds no such rise for K = 4; see the tests.)
ETF_ANGLE_RISE_K8 = torch.tensor([1.0, 10.0, 10.0, 10.0, 10.0, 0.1, 0.1, 0.1], dtype=torch.float64)

#: K = 4, unbalanced: mode 3 has a = 10, b = 0.2 (lam = 2, the largest), the
#: others a = b = 1. Since dlam_i/dt = (1 - mu_i)(a_i^2 + b_i^2)/K, the already
#: largest mode grows about 50 times faster than balance would allow and
#: V rises from 0.066 to about 0.30: V is not a Lyapunov function off balance.
UNBALANCED_V_RISE_A = torch.tensor([0.0, 1.0, 1.0, 10.0], dtype=torch.float64)
UNBALANCED_V_RISE_B = torch.tensor([0.0, 1.0, 1.0, 0.2], dtype=torch.float64)
