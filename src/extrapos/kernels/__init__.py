"""Attention kernels: the bias paths (`kernels.attention`), the linear (ALiBi) fold, the
learned-table autograd function and the measured dispatch between them."""
