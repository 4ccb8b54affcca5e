"""Every test computes with one torch thread, as the service does by default.

A step's rounding may depend on the thread count (a convolution's weight gradient sums
over chunks split by thread), so references built in the test process equal the
service's models bit for bit only at the service's thread count.
"""

from __future__ import annotations

import torch

torch.set_num_threads(1)
