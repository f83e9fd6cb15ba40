"""An MGiaD training step compiles as one graph: the fused ops trace with fullgraph=True, no breaks."""
import copy

import torch
import torch.nn.functional as F
from support import DEVICE, ON_GPU, rel_err

from mgiad import MGiaD


def test_mgiad_training_step_traces_with_fullgraph():
    torch.manual_seed(0)
    model = MGiaD(num_classes=3, in_channels=1, widths=(8, 16), smoothing_steps=(1, 1), coarsest_channels=4,
                  group_size=4, backend="triton").to(DEVICE)
    eager = copy.deepcopy(model)
    x, y = torch.randn(2, 1, 4, 4, device=DEVICE), torch.tensor([0, 2], device=DEVICE)
    compiled = torch.compile(lambda x, y: F.cross_entropy(model(x), y), fullgraph=True,
                             backend="inductor" if ON_GPU else "aot_eager")
    loss = compiled(x, y)
    loss.backward()
    loss_eager = F.cross_entropy(eager(x), y)
    loss_eager.backward()
    assert rel_err(loss, loss_eager) <= 1e-6
    for (name, p), p_eager in zip(model.named_parameters(), eager.parameters()):
        assert rel_err(p.grad, p_eager.grad) <= 1e-5, name
    for (name, b), b_eager in zip(model.named_buffers(), eager.buffers()):
        assert rel_err(b.float(), b_eager.float()) <= 1e-5 or torch.equal(b, b_eager), name
