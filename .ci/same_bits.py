"""One line per case: every op's forward and backward operators over the four dtypes and the
coefficient shapes (one-element, per channel last and first, per group, runs long and short),
with -0.0, NaN and inf in x, and a digest of all the outputs' bytes. .ci/aarch64 runs it on
x86-64 and on aarch64 and compares: the CPU results are the same bits on both.

The inputs are drawn in float64 (torch's float32 normal draws differ between the two machines)
and rounded to float32 first (torch converts float64 to float16 directly on one of them)."""

import hashlib

import torch

import torchext

# (13, 1, 1) on 9x5 maps and (13, 1) on runs of 74: short runs (cpu/loops.h's kTileSizes; 16-bit
# ones from 64), GNU C vectors of 32 bytes (NEON pairs on aarch64). The last: per channel beyond
# the caches (kStreamBytes), where the column tiles run as strips of GNU C vectors.
CASES = [((2000,), ()), ((32, 19, 77), (77,)), ((6, 13, 9, 5), (13, 1, 1)),
         ((40, 13, 74), (13, 1)), ((4, 9, 8, 6), (8, 1)), ((300, 1031), ()), ((3, 70000), (3, 1)),
         ((1501, 1030), (1030,))]


def draw(shape, dtype):
    return torch.randn(shape, dtype=torch.float64).float().to(dtype)


def main():
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        for shape, coef_shape in CASES:
            x = draw(shape, dtype) * 2
            x.view(-1)[:3] = torch.tensor([-0.0, float("nan"), float("inf")], dtype=dtype)
            g = draw(shape, dtype)
            for name, op in torchext.functional.OPS.items():
                coefs = [draw(coef_shape, dtype) for _ in op.coefs]
                y = getattr(torch.ops.torchext, name)(x, *coefs)
                v = y if op.saves == "result" else x
                grads = getattr(torch.ops.torchext, f"{name}_backward")(g, v, *coefs)
                grads = (grads,) if isinstance(grads, torch.Tensor) else grads
                digest = hashlib.sha256()
                for t in (y, *grads):
                    digest.update(t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
                print(name, dtype, shape, coef_shape, digest.hexdigest()[:16])


if __name__ == "__main__":
    main()
