"""The strategies work on a user's own model and batches, without studies or the engine (as the
README shows)."""
import torch

from robustlab.models import create_model
from robustlab.strategies import CoTeaching, FrozenEncoderClassifier, SupConPretrain, SupConViews


def test_coteaching_in_a_hand_written_loop_learns_a_separable_toy_task():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 32, 32)
    y = (x[:, 0].mean((1, 2)) > 0).long()  # a label the network can read off the red channel
    noisy = y.clone()
    noisy[:8] = 1 - noisy[:8]
    st = CoTeaching(create_model("tiny_cnn", num_classes=2), create_model("tiny_cnn", num_classes=2),
                    forget_rate=0.125, num_gradual=2, clean_labels=y)
    opt = torch.optim.Adam(st.parameters(), lr=1e-2)
    for epoch in range(15):
        st.train()
        st.on_epoch_start(epoch, 15)
        out = st.train_step(x, noisy, torch.arange(64), epoch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    st.eval()
    assert (st.predict(x).argmax(1) == y).float().mean() > 0.8
    assert st.epoch_metrics()["remember_rate"] == 0.875
    assert st.epoch_metrics()["label_precision"] > 0.875  # keeps mostly the clean labels


def test_supcon_then_probe_on_user_batches():
    views = SupConViews((0.5,) * 3, (0.25,) * 3)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    labels = torch.tensor([0, 1] * 4)
    pre = SupConPretrain(create_model("tiny_cnn"), temperature=0.1)
    loss = pre.train_step(views(images, torch.Generator().manual_seed(0)), labels, torch.arange(8), 0).loss
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    probe = FrozenEncoderClassifier(pre.model, num_classes=2, head="linear")
    assert probe.predict(images.float() / 255).shape == (8, 2)


def test_the_library_never_imports_the_studies():
    """Layers import only downward: studies use robustlab, never the reverse (nested imports too)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "robustlab"
    upward = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            upward += [f"{path.relative_to(root.parent)}:{node.lineno} {n}" for n in names
                       if n == "studies" or n.startswith("studies.")]
    assert len(list(root.rglob("*.py"))) > 50  # the walk saw the package
    assert upward == []
