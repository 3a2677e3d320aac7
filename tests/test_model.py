"""Model tests: loss formulas against float64 numpy references, frozen-encoder guarantees,
encoder shapes, temperatures, masking and determinism. Fast, seeded, CPU only."""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch_geometric.data import Batch, Data

from acml_ray.chem import GraphFeaturizer
from acml_ray.chem.features import (
    ATOM_FEATURE_DIMS,
    ATOM_VOCABS,
    BOND_FEATURE_DIMS,
    BOND_VOCABS,
)
from acml_ray.config import ACMLConfig, GraphEncoderConfig
from acml_ray.model import (
    ACMLModel,
    ContrastiveLoss,
    GINEBondConv,
    GraphEncoder,
    ProjectionHead,
    Temperature,
    clip_soft_target_loss,
    info_nce_loss,
)

SMILES = [
    "CCO",
    "c1ccccc1O",
    "CC(=O)Oc1ccccc1C(=O)O",
    "C[C@H](N)C(=O)O",
    "C/C=C/C",
    "CN1C=NC2=C1C(=O)N(C(=O)N2C)C",
    "O=C(O)CCl",
    "C1CCNCC1",
]


# ----------------------------------------------------------------------------- graphs


def _rdkit_graph(smiles: str) -> Data:
    """An independent, atom-by-atom reading of the features of `acml_ray.chem.features`, the
    reference the project's vectorised featuriser is checked against."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)

    def idx(vocab: list, value) -> int:
        return vocab.index(value) if value in vocab else len(vocab)

    atom_getters = {
        "atomic_num": lambda a: a.GetAtomicNum(),
        "chiral_tag": lambda a: a.GetChiralTag(),
        "degree": lambda a: a.GetTotalDegree(),  # hydrogens count, as in OGB / PyG from_smiles
        "formal_charge": lambda a: a.GetFormalCharge(),
        "total_hs": lambda a: a.GetTotalNumHs(),
        "hybridization": lambda a: a.GetHybridization(),
        "aromatic": lambda a: a.GetIsAromatic(),
    }
    bond_getters = {
        "bond_type": lambda b: b.GetBondType(),
        "stereo": lambda b: b.GetStereo(),
        "conjugated": lambda b: b.GetIsConjugated(),
        "in_ring": lambda b: b.IsInRing(),
    }
    x = [[idx(ATOM_VOCABS[k], f(a)) for k, f in atom_getters.items()] for a in mol.GetAtoms()]
    rows, attrs = [], []
    for b in mol.GetBonds():
        feats = [idx(BOND_VOCABS[k], f(b)) for k, f in bond_getters.items()]
        i, j = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
        rows += [(i, j), (j, i)]
        attrs += [feats, feats]
    edge_index = torch.tensor(rows, dtype=torch.long).T.reshape(2, -1)
    edge_attr = torch.tensor(attrs, dtype=torch.long).reshape(-1, len(BOND_FEATURE_DIMS))
    return Data(x=torch.tensor(x, dtype=torch.long), edge_index=edge_index, edge_attr=edge_attr)


def _graph(smiles: str) -> Data:
    return GraphFeaturizer().featurize(smiles).to_pyg()


@pytest.mark.parametrize("smiles", SMILES)
def test_featurizer_graph_equals_an_independent_rdkit_reading(smiles: str) -> None:
    # The model's input, checked against features read straight from RDKit atom by atom.
    ours, reference = _graph(smiles), _rdkit_graph(smiles)
    assert torch.equal(ours.x, reference.x)
    ours_edges = sorted(zip(map(tuple, ours.edge_index.T.tolist()), map(tuple, ours.edge_attr.tolist())))
    ref_edges = sorted(zip(map(tuple, reference.edge_index.T.tolist()), map(tuple, reference.edge_attr.tolist())))
    assert ours_edges == ref_edges


@pytest.fixture(scope="module")
def batch() -> Batch:
    graphs = [_graph(s) for s in SMILES]
    for g in graphs:
        assert g.x.dtype == torch.long and g.x.shape[1] == len(ATOM_FEATURE_DIMS)
        assert g.edge_attr.shape[1] == len(BOND_FEATURE_DIMS)
    return Batch.from_data_list(graphs)


# ----------------------------------------------------------------------------- loss references


def _log_softmax_rows(a: np.ndarray) -> np.ndarray:
    m = a.max(axis=1, keepdims=True)
    return a - m - np.log(np.exp(a - m).sum(axis=1, keepdims=True))


def _ref_clip_soft(c: np.ndarray, g: np.ndarray, tau: float) -> float:
    n = c.shape[0]
    logits = c @ g.T / tau
    sim = tau * (c @ c.T + g @ g.T) / 2
    targets = np.exp(_log_softmax_rows(sim))
    lp_rows = _log_softmax_rows(logits)
    lp_cols = _log_softmax_rows(logits.T)
    total = 0.0
    for i in range(n):
        ce_row = -sum(targets[i, j] * lp_rows[i, j] for j in range(n))
        ce_col = -sum(targets.T[i, j] * lp_cols[i, j] for j in range(n))
        total += (ce_row + ce_col) / 2
    return total / n


def _ref_info_nce(c: np.ndarray, g: np.ndarray, tau: float) -> float:
    cn = c / np.linalg.norm(c, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    logits = cn @ gn.T / tau
    n = c.shape[0]
    a = -np.mean([_log_softmax_rows(logits)[i, i] for i in range(n)])
    b = -np.mean([_log_softmax_rows(logits.T)[i, i] for i in range(n)])
    return (a + b) / 2


@pytest.mark.parametrize("tau", [1.0, 0.07])
@pytest.mark.parametrize("fn,ref", [(clip_soft_target_loss, _ref_clip_soft), (info_nce_loss, _ref_info_nce)])
def test_loss_matches_float64_reference(fn, ref, tau: float) -> None:
    rng = np.random.default_rng(0)
    c_np = rng.normal(size=(7, 5)) * 0.5
    g_np = rng.normal(size=(7, 5)) * 0.5
    expected = ref(c_np, g_np, tau)

    c = torch.tensor(c_np, dtype=torch.float64, requires_grad=True)
    g = torch.tensor(g_np, dtype=torch.float64, requires_grad=True)
    got = fn(c, g, tau)
    assert got.dim() == 0
    assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    got.backward()
    for t in (c, g):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0

    # float32 path, with the temperature coming from the module (a tensor)
    loss_kind = "clip_soft" if fn is clip_soft_target_loss else "infonce"
    module = ContrastiveLoss(kind=loss_kind, temperature=tau)
    got32 = module(c.detach().float(), g.detach().float())
    assert got32.item() == pytest.approx(expected, rel=1e-4)


def test_loss_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        info_nce_loss(torch.zeros(3, 4), torch.zeros(2, 4), 1.0)
    with pytest.raises(ValueError):
        clip_soft_target_loss(torch.zeros(3, 4), torch.zeros(3, 5), 1.0)


# ----------------------------------------------------------------------------- graph encoder


@pytest.mark.parametrize("pooling", ["sum", "mean", "max"])
@pytest.mark.parametrize("jk", ["last", "sum", "concat"])
def test_graph_encoder_shapes(batch: Batch, pooling: str, jk: str) -> None:
    torch.manual_seed(0)
    enc = GraphEncoder(num_layers=3, hidden_dim=16, pooling=pooling, jk=jk, out_dim=24)
    assert enc.out_dim == 24
    out = enc(batch)
    assert out.shape == (len(SMILES), 24)
    assert torch.isfinite(out).all()
    default = GraphEncoder.from_config(GraphEncoderConfig(num_layers=1, hidden_dim=8, pooling=pooling, jk=jk))
    assert default.out_dim == 8
    assert default(batch).shape == (len(SMILES), 8)


def test_graph_encoder_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_layers"):
        GraphEncoder(num_layers=0)
    with pytest.raises(ValueError, match="pooling"):
        GraphEncoder(pooling="attention")
    with pytest.raises(ValueError, match="jk"):
        GraphEncoder(jk="max")


def test_gine_conv_adds_self_loops() -> None:
    torch.manual_seed(0)
    conv = GINEBondConv(4)
    # An isolated atom still receives its own message (x_i + self-loop bond embedding).
    x = torch.randn(1, 4)
    no_edges = torch.empty(2, 0, dtype=torch.long)
    no_bonds = torch.empty(0, len(BOND_FEATURE_DIMS), dtype=torch.long)
    out = conv(x, no_edges, no_bonds)
    loop = torch.tensor([[BOND_FEATURE_DIMS[0] - 1, 0, 0, 0]])
    assert torch.allclose(out, conv.mlp(x + conv.bond_encoder(loop)))


def test_projection_head() -> None:
    head = ProjectionHead(10, dims=[6, 4], dropout=0.0)
    assert head.out_dim == 4 and len(head.cells) == 2
    assert head(torch.randn(3, 10)).shape == (3, 4)


def test_determinism(batch: Batch) -> None:
    def run() -> torch.Tensor:
        torch.manual_seed(123)
        model = ACMLModel(
            GraphEncoder(num_layers=2, hidden_dim=16),
            {"image": 8},
            projection=functools.partial(ProjectionHead, dims=[12]),
        )
        model.train()
        torch.manual_seed(7)  # dropout stream
        emb = torch.randn(len(SMILES), 8)
        return model(batch, {"image": emb})["loss"].detach()

    assert torch.equal(run(), run())


# ----------------------------------------------------------------------------- frozen encoders


class _FakeImageEncoder(nn.Module):
    """Stands in for a pretrained image encoder: has Dropout and BatchNorm, so train mode would
    change both its outputs and its running statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(36, 20),
            nn.BatchNorm1d(20),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(20, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _small_model(frozen: dict[str, nn.Module] | None = None, **loss_kw) -> ACMLModel:
    return ACMLModel(
        GraphEncoder(num_layers=2, hidden_dim=16),
        {"image": 10},
        projection=functools.partial(ProjectionHead, dims=[12, 12]),
        loss=functools.partial(ContrastiveLoss, **loss_kw),
        frozen_encoders=frozen,
    )


def test_frozen_encoder_untouched_by_training(batch: Batch) -> None:
    torch.manual_seed(0)
    model = _small_model({"image": _FakeImageEncoder()}, kind="infonce", temperature=0.1)
    frozen = model.frozen_encoders["image"]
    frozen_before = copy.deepcopy(frozen.state_dict())
    trainable_before = {
        k: v.detach().clone() for k, v in model.named_parameters() if not k.startswith("frozen_encoders.")
    }

    model.train()
    assert model.training and model.graph_encoder.training
    assert frozen.training is False
    assert all(not m.training for m in frozen.modules())
    assert all(not p.requires_grad for p in frozen.parameters())

    frozen_ids = {id(p) for p in frozen.parameters()}
    trainable = list(model.trainable_parameters())
    assert trainable and not any(id(p) in frozen_ids for p in trainable)
    assert len(trainable) == len(list(model.parameters())) - len(frozen_ids)

    raw = torch.randn(len(SMILES), 6, 6)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2, weight_decay=1e-3)
    emb0 = model.encode_modality(raw, "image")
    for _ in range(4):
        emb = model.encode_modality(raw, "image")
        assert not emb.requires_grad
        assert torch.equal(emb, emb0)  # eval mode: no dropout noise
        out = model(batch, {"image": emb})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        model.train()

    assert frozen.training is False
    for k, v in frozen.state_dict().items():  # params and BatchNorm running stats
        assert torch.equal(v, frozen_before[k]), k
    assert all(p.grad is None for p in frozen.parameters())
    params = dict(model.named_parameters())
    changed = {k for k, v in trainable_before.items() if not torch.equal(params[k].detach(), v)}
    assert any(k.startswith("graph_encoder.") for k in changed)
    assert any(k.startswith("graph_projections.") for k in changed)
    assert any(k.startswith("modality_projections.") for k in changed)

    model.eval()
    assert not model.training and frozen.training is False


def test_encode_modality_requires_encoder() -> None:
    model = _small_model()
    with pytest.raises(KeyError):
        model.encode_modality(torch.zeros(2, 6, 6), "image")
    with pytest.raises(KeyError):
        model.project_modality(torch.zeros(2, 10), "nmr")


def test_from_config(batch: Batch) -> None:
    cfg = ACMLConfig.model_validate(
        {
            "graph_encoder": {"num_layers": 2, "hidden_dim": 8},
            "projection": {"dims": [6]},
            "loss": {"kind": "infonce", "temperature": 0.07, "learnable_temperature": True},
            "modalities": [{"name": "image", "weight": 2.0}, {"name": "smiles", "weight": 0.5}],
        }
    )
    model = ACMLModel.from_config(cfg, {"image": 10, "smiles": 4})
    assert model.loss_weights == {"image": 2.0, "smiles": 0.5}
    assert model.temperatures()["image"] == pytest.approx(0.07, rel=1e-5)
    assert model.project_graph(batch, "smiles").shape == (len(SMILES), 6)
    assert model.project_modality(torch.randn(3, 4), "smiles").shape == (3, 6)
    model.eval()
    n = len(SMILES)
    inputs = {"image": torch.randn(n, 10), "smiles": torch.randn(n, 4)}
    out = model(batch, inputs)
    assert set(out) == {"loss", "loss/image", "loss/smiles"}
    expected = 2.0 * out["loss/image"] + 0.5 * out["loss/smiles"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    out2 = model(batch, inputs, weights={"smiles": 3.0})
    expected2 = 2.0 * out["loss/image"] + 3.0 * out["loss/smiles"]
    assert out2["loss"].item() == pytest.approx(expected2.item(), rel=1e-6)


def test_saved_model_round_trip_and_safe_load(batch: Batch, tmp_path) -> None:
    import pickle

    from acml_ray.model.serialization import MODEL_FILE, load_model, save_model

    torch.manual_seed(0)
    cfg = ACMLConfig.model_validate(
        {
            "graph_encoder": {"num_layers": 2, "hidden_dim": 8},
            "projection": {"dims": [6]},
            "modalities": [{"name": "image"}],
        }
    )
    model = ACMLModel.from_config(cfg, {"image": 10}).eval()
    save_model(model, cfg, tmp_path / "m", extra={"epoch": 3, "metrics": {"val/score": 0.5}})
    loaded, loaded_cfg, extra = load_model(tmp_path / "m")
    assert loaded_cfg == cfg and extra == {"epoch": 3, "metrics": {"val/score": 0.5}}
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded.project_graph(batch, "image"), model.project_graph(batch, "image"))

    # A configuration from a newer release (a key this version does not know): a clear error.
    blob = torch.load(tmp_path / "m" / MODEL_FILE, weights_only=True)
    blob["config"]["graph_encoder"]["virtual_node"] = True
    blob["acml_ray_version"] = "9.9.0"
    torch.save(blob, tmp_path / "m" / MODEL_FILE)
    with pytest.raises(ValueError, match=r"saved by acml-ray 9\.9\.0.*cannot read"):
        load_model(tmp_path / "m")

    # A model file that would run code when unpickled is refused, not executed.
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil").mkdir()
    torch.save({"config": cfg.model_dump(mode="json"), "payload": Payload()}, tmp_path / "evil" / MODEL_FILE)
    with pytest.raises(pickle.UnpicklingError):
        load_model(tmp_path / "evil")


# ----------------------------------------------------------------------------- temperature


def test_temperature_learnable_vs_fixed(batch: Batch) -> None:
    assert Temperature(0.07)().item() == pytest.approx(0.07, rel=1e-6)
    with pytest.raises(ValueError):
        Temperature(0.0001)
    for learnable in (True, False):
        torch.manual_seed(0)
        model = _small_model(kind="infonce", temperature=0.5, learnable_temperature=learnable)
        tau_module = model.losses["image"].temperature
        assert (tau_module.log_tau in set(model.parameters())) is learnable
        before = tau_module().item()
        opt = torch.optim.AdamW(model.trainable_parameters(), lr=5e-2)
        emb = torch.randn(len(SMILES), 10)
        model.train()
        for _ in range(3):
            loss = model(batch, {"image": emb})["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        after = tau_module().item()
        if learnable:
            assert after != before
        else:
            assert after == before == pytest.approx(0.5)


def test_temperature_clamped() -> None:
    t = Temperature(1.0, learnable=True)
    with torch.no_grad():
        t.log_tau.fill_(50.0)
    assert t().item() == pytest.approx(100.0)
    with torch.no_grad():
        t.log_tau.fill_(-50.0)
    assert t().item() == pytest.approx(0.01)


# ----------------------------------------------------------------------------- masks


@pytest.mark.parametrize("kind", ["clip_soft", "infonce"])
def test_masked_rows_do_not_affect_loss(batch: Batch, kind: str) -> None:
    torch.manual_seed(0)
    model = _small_model(kind=kind, temperature=0.5)
    model.eval()  # BatchNorm statistics must not depend on which graphs are in the batch
    n = len(SMILES)
    emb = torch.randn(n, 10)
    mask = torch.tensor([True, False, True, True, False, True, True, False])
    out = model(batch, {"image": emb, "image__mask": mask})

    with torch.no_grad():
        g = model.graph_projections["image"](model.encode_graph(batch))[mask]
        c = model.modality_projections["image"](emb[mask])
        expected = model.losses["image"](c, g)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert out["loss/image"].item() == pytest.approx(expected.item(), rel=1e-6)

    # Garbage in masked-out rows changes nothing.
    emb2 = emb.clone()
    emb2[~mask] = 1e6
    out2 = model(batch, {"image": emb2, "image__mask": mask})
    assert out2["loss"].item() == out["loss"].item()


def test_modality_skipped_with_fewer_than_two_rows(batch: Batch) -> None:
    torch.manual_seed(0)
    model = _small_model()
    n = len(SMILES)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[3] = True
    out = model(batch, {"image": torch.randn(n, 10), "image__mask": mask})
    assert "loss/image" not in out
    assert out["loss"].item() == 0.0
    out["loss"].backward()  # still differentiable, so a training step does not crash


def test_forward_rejects_bad_inputs(batch: Batch) -> None:
    model = _small_model()
    with pytest.raises(KeyError):
        model(batch, {"nmr": torch.randn(len(SMILES), 10)})
    with pytest.raises(ValueError):
        model(batch, {"image": torch.randn(len(SMILES) - 1, 10)})
    assert math.isfinite(model(batch, {"image": torch.randn(len(SMILES), 10)})["loss"].item())


# ----------------------------------------------------------------------------- injected parts


class _MeanAtomEncoder(nn.Module):
    """A user's own graph side: embed atoms, mean-pool per graph (no message passing)."""

    def __init__(self, out_dim: int = 6) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.atoms = nn.Embedding(ATOM_FEATURE_DIMS[0], out_dim)

    def forward(self, batch: Batch) -> torch.Tensor:
        from torch_geometric.utils import scatter

        return scatter(self.atoms(batch.x[:, 0]), batch.batch, dim=0, dim_size=batch.num_graphs, reduce="mean")


def test_model_takes_user_parts_as_plain_arguments(batch: Batch) -> None:
    torch.manual_seed(0)
    seen: list[tuple[int, int]] = []

    def cosine_loss() -> nn.Module:
        class Cosine(nn.Module):
            def forward(self, c: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
                seen.append(tuple(c.shape))
                return 1 - torch.nn.functional.cosine_similarity(c, g).mean()

        return Cosine()

    model = ACMLModel(
        _MeanAtomEncoder(),
        {"image": 10, "smiles": 4},
        projection=lambda d: ProjectionHead(d, dims=[5], dropout=0.0),
        loss=cosine_loss,
    )
    assert model.embed_dim == 5 and isinstance(model.graph_encoder, _MeanAtomEncoder)
    out = model(batch, {"image": torch.randn(len(SMILES), 10), "smiles": torch.randn(len(SMILES), 4)})
    out["loss"].backward()
    assert seen == [(len(SMILES), 5), (len(SMILES), 5)]  # one loss module per modality
    assert model.graph_encoder.atoms.weight.grad is not None


def test_projection_heads_must_share_the_joint_width() -> None:
    widths = iter([4, 6])
    with pytest.raises(ValueError, match="joint width"):
        ACMLModel(
            GraphEncoder(num_layers=1, hidden_dim=8),
            {"image": 10},
            projection=lambda d: ProjectionHead(d, dims=[next(widths)]),
        )


def test_from_config_builds_the_configured_parts() -> None:
    cfg = ACMLConfig.model_validate(
        {
            "graph_encoder": {"num_layers": 3, "hidden_dim": 32},
            "projection": {"dims": [64, 16]},
            "loss": {"kind": "infonce", "temperature": 0.07},
        }
    )
    model = ACMLModel.from_config(cfg, {"image": 10})
    assert model.graph_encoder.num_layers == 3 and model.graph_encoder.out_dim == 32
    assert [c.projection.out_features for c in model.graph_projections["image"].cells] == [64, 16]
    assert model.losses["image"].kind == "infonce"
    assert model.temperatures()["image"] == pytest.approx(0.07)
