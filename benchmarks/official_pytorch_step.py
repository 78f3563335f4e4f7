"""Images/s of the official FTWT PyTorch train step, for a side-by-side comparison.

    git clone <official FTWT repo> /tmp/FTWT     # selkerdawy/FTWT, CIFAR code
    python -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch matplotlib absl-py
    /tmp/torchvenv/bin/python benchmarks/official_pytorch_step.py --official_repo=/tmp/FTWT

Runs the official `MobileNet` with `fuse_masking` and `compute_mask_loss_per_input`
from the official code, and the step body of its `cifar.py` (forward, CE + mask loss,
backward, SGD steps of the backbone and mask optimizers), on random CIFAR-size
batches. Plain (baseline) and FTWT steps alternate, as in `train_overhead.py`.
The official repository's dataset/visualization helpers import torchvision and
tensorboardX; they are not used here, so empty stand-in modules satisfy those imports.
Nothing of the official code is copied into this repository.
"""

import os
import sys
import time
import types

from absl import app, flags

flags.DEFINE_string("official_repo", None, "Path of a checkout of the official FTWT code.", required=True)
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("steps", 10, "Timed steps per round.")
flags.DEFINE_integer("rounds", 3, "Alternating rounds.")
flags.DEFINE_integer("threads", 2, "torch.set_num_threads.")
flags.DEFINE_float("threshold", 0.95, "FTWT threshold r (mthresh).")
FLAGS = flags.FLAGS


def _stub_unused_imports():
    for name in ("torchvision", "torchvision.datasets", "torchvision.transforms", "tensorboardX", "cv2", "thop",
                 "thop.vision", "thop.vision.basic_hooks"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["tensorboardX"].SummaryWriter = object
    sys.modules["thop"].profile = None
    sys.modules["thop.vision.basic_hooks"].zero_ops = None


def main(argv):
    del argv
    import numpy as np
    import torch

    torch.set_num_threads(FLAGS.threads)
    _stub_unused_imports()
    sys.path.insert(0, os.path.abspath(FLAGS.official_repo))
    from models.cifar.mobilenet import mobilenetv1
    from utils.utils import compute_mask_loss_per_input, fuse_masking

    images = torch.rand(FLAGS.batch_size, 3, 32, 32)
    labels = torch.randint(0, 10, (FLAGS.batch_size,))
    criterion = torch.nn.CrossEntropyLoss()

    plain = mobilenetv1(num_classes=10)
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    gated = mobilenetv1(num_classes=10)
    args = types.SimpleNamespace(arch="mobilenetv1", use_cuda=False, embedding=-1, gt_type="mass", nclass=10,
                                 mthresh=FLAGS.threshold, softmax=1, mode="decoupled")

    class _Parallel(torch.nn.Module):  # fuse_masking expects a DataParallel-like `.module`
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x):
            return self.module(x)

    gated = _Parallel(gated)
    fuse_masking(gated, images, args)
    mask_params = [p for n, p in gated.named_parameters() if "Mask" in n]
    backbone_params = [p for n, p in gated.named_parameters() if "Mask" not in n]
    backbone_opt = torch.optim.SGD(backbone_params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    mask_opt = torch.optim.SGD(mask_params, lr=0.1, momentum=0.9)

    def plain_step():
        loss = criterion(plain(images), labels)
        plain_opt.zero_grad()
        loss.backward()
        plain_opt.step()

    def ftwt_step():  # the body of the official cifar.py train() loop
        inputs = torch.autograd.Variable(images, requires_grad=True)
        outputs, mask_logits, gt_mask, _ = gated(inputs)
        loss = criterion(outputs, labels)
        mask_loss, _, _ = compute_mask_loss_per_input(gt_mask, mask_logits, labels, lweight=1.0)
        loss = loss + mask_loss
        backbone_opt.zero_grad()
        mask_opt.zero_grad()
        loss.backward()
        backbone_opt.step()
        mask_opt.step()

    def images_per_second(step, steps):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        return steps * FLAGS.batch_size / (time.perf_counter() - start)

    plain.train()
    gated.train()
    for step in (plain_step, ftwt_step):
        images_per_second(step, 2)
    results = {"plain": [], "ftwt": []}
    for round_index in range(FLAGS.rounds):
        results["plain"].append(images_per_second(plain_step, FLAGS.steps))
        results["ftwt"].append(images_per_second(ftwt_step, FLAGS.steps))
        print(f"round {round_index + 1}: plain {results['plain'][-1]:.0f} img/s, ftwt {results['ftwt'][-1]:.0f} img/s")
    plain_ips, ftwt_ips = (float(np.median(results[k])) for k in ("plain", "ftwt"))
    print(f"\nofficial PyTorch MobileNetV1-CIFAR, batch {FLAGS.batch_size}, {FLAGS.threads} threads, torch {torch.__version__}")
    print(f"plain train step: {plain_ips:.0f} images/s (median of {FLAGS.rounds})")
    print(f"FTWT  train step: {ftwt_ips:.0f} images/s (decoupled, r={FLAGS.threshold:g})")


if __name__ == "__main__":
    app.run(main)
