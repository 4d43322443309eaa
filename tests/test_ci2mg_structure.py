"""CI²MG-S: CI²MG's completed modalities as an item-item graph (recbole_ci2mg/model/ci2mg_structure.py)."""

import numpy as np
import pytest
import torch
from recbole.data import data_preparation
from recbole.utils import init_seed

from conftest import both_scores, optimizer_step, planted_interactions, write_benchmark
from recbole_ci2mg.model.layers.graph import lightgcn_layers
from recbole_ci2mg.quick_start import build_config, create_dataset, properties_files
from recbole_ci2mg.registry import get_model


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def settings(tmp_path):
    splits, clusters = planted_interactions()
    rng = np.random.default_rng(1)
    v = np.eye(4, dtype=np.float32)[clusters] + 0.01 * rng.standard_normal((40, 4)).astype(np.float32)
    t = rng.standard_normal((40, 3)).astype(np.float32)
    return write_benchmark(tmp_path / "data", "tiny", splits, {"v": (v, None), "t": (t, None)})


# CI²MG's Eq. 2 trained with BPR alone (CI²MG-S's defaults before SimGCL's objective became one)
BPR_EQ2 = {"id_noise_contrast": False, "id_readout": "all", "n_layers": 2, "layer0_gate": "none"}


def built(settings, model="CI2MG-S", **overrides):
    config = build_config(model, "tiny", config_dict={
        "n_prototypes": 4, "ot_block_size": 16, "missing_rate": 0.5, **settings, **overrides})
    train, _, _ = data_preparation(config, create_dataset(config))
    init_seed(config["seed"], config["reproducibility"])
    return get_model(model)(config, train._dataset), train


def test_the_variant_reads_ci2mgs_defaults_first(settings):
    files = properties_files(get_model("CI2MG-S"), "tiny")
    assert [f.rsplit("/", 1)[-1] for f in files] == ["overall.yaml", "CI2MG.yaml", "CI2MGS.yaml"]
    config = build_config("CI2MG-S", "tiny", config_dict=settings)
    assert config["hyper_temperature"] == 0.1 and config["ot_solver"] == "scalable"  # from CI2MG.yaml
    assert config["item_graph"] == "imputed+interactions" and config["layer0_gate"] == "degree"  # from CI2MGS.yaml
    assert config["n_layers"] == 3 and config["id_noise_contrast"]  # CI2MGS.yaml's, over CI2MG.yaml's n_layers 2


def test_without_graph_and_with_content_it_is_ci2mg(settings):
    variant, train = built(settings, item_graph="none", score_content=True, **BPR_EQ2)
    ci2mg, _ = built(settings, model="CI2MG")
    batch = next(iter(train))
    for model in (variant, ci2mg):
        model.train()
    torch.manual_seed(0)
    a = variant.calculate_loss(batch)
    torch.manual_seed(0)
    b = ci2mg.calculate_loss(batch)
    assert torch.equal(a, b)


def test_the_raw_graph_links_observed_items_and_leaves_missing_ones_alone(settings):
    model, _ = built(settings, item_graph="raw", item_graph_missing="self")
    assert bool(model.graph_built)
    for m in range(model.n_modalities):
        observed = torch.zeros(model.n_items, dtype=torch.bool)
        observed[model.content.observed_index(m)] = True
        neighbours, weights = model.graph_neighbours[m], model.graph_weights[m]
        for item in torch.nonzero(~observed).squeeze(1).tolist():
            assert neighbours[item, 0] == item and weights[item, 0] == 1 and (weights[item, 1:] == 0).all()
        linked = neighbours[observed][weights[observed] > 0]
        assert observed[linked].all()  # observed items link only observed items
    adjacency = model.item_adjacency().to_coo().to_dense()
    assert torch.isfinite(adjacency).all() and (adjacency >= 0).all()


def test_the_generated_graph_is_rebuilt_each_epoch_and_saved_with_the_model(settings):
    model, train = built(settings, item_graph="generated")
    assert bool(model.graph_built)  # built with the model, from its initialised Z
    first = model.graph_neighbours.clone()
    model.train()  # an epoch starts: rebuilt, from the same parameters
    assert torch.equal(model.graph_neighbours, first)
    reaches = torch.zeros(model.n_items, dtype=torch.bool)
    reaches[first[:, 1:].reshape(-1)] = True
    assert reaches[1:].float().mean() > 0.5  # missing items are linked too, not only observed ones
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for batch in train:
        optimizer_step(model, optimizer, batch)
    model.eval()
    assert torch.equal(model.graph_neighbours, first)  # evaluation does not rebuild
    model.train()
    assert not torch.equal(model.graph_neighbours, first)
    model.eval()
    full, pointwise = both_scores(model)
    assert torch.allclose(full, pointwise, rtol=1e-4, atol=1e-5)
    reloaded, _ = built(settings, item_graph="generated")
    reloaded.load_state_dict(model.state_dict())
    reloaded.eval()
    assert torch.allclose(both_scores(reloaded)[0], full, rtol=1e-5, atol=1e-6)


def test_without_content_in_the_score_only_the_id_block_is_scored(settings):
    model, train = built(settings, item_graph="generated", score_content=False)
    model.train()
    model.eval()
    user_e, item_e, views = model.forward()
    assert user_e.shape[1] == model.latent_dim and item_e.shape[1] == model.latent_dim
    assert model.score_blocks == ["id"]
    model.train()
    loss = model.calculate_loss(next(iter(train)))
    loss.backward()
    assert model.content.projections[0].weight.grad is not None  # the content branch still trains (Eq. 10, 12)


def test_an_unknown_graph_is_a_clear_error(settings):
    with pytest.raises(ValueError, match="item_graph must be one of"):
        built(settings, item_graph="knn")


@pytest.mark.parametrize("item_graph", ["none", "raw"])
def test_without_content_in_any_score_the_generation_branch_is_not_run(settings, item_graph):
    from recbole_ci2mg.model.ci2mg import CI2MG

    model, train = built(settings, item_graph=item_graph, score_content=False, **BPR_EQ2)
    assert not model.content_reaches_score and not (model.use_contrastive or model.use_task_guided)
    batch = next(iter(train))
    model.train()
    loss = model.calculate_loss(batch)
    loss.backward()
    content = [p for name, p in model.named_parameters() if not name.startswith(("user_embedding", "item_embedding"))]
    assert content and all(p.grad is None for p in content)  # nothing of the branch ran
    skipped = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    # the same BPR and λ3 through the whole of CI2MG's forward pass: the same ID embeddings and gradients
    model.zero_grad(set_to_none=True)
    left_out = model.aggregation.without(batch[model.USER_ID], batch[model.ITEM_ID])
    user_e, item_e, views = CI2MG.forward(model, left_out)
    assert views["Z"] and user_e.shape[1] == model.latent_dim  # the branch ran, and no score read it
    u = user_e[batch[model.USER_ID]]
    whole = model.mf_loss((u * item_e[batch[model.ITEM_ID]]).sum(1), (u * item_e[batch[model.NEG_ITEM_ID]]).sum(1))
    whole = whole + model.reg_weight * model.reg_loss(
        model.user_embedding(batch[model.USER_ID]), model.item_embedding(batch[model.ITEM_ID]),
        model.item_embedding(batch[model.NEG_ITEM_ID]), require_pow=model.require_pow)
    torch.testing.assert_close(whole, loss)
    whole.backward()
    for name, grad in skipped.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad)
    full, pointwise = both_scores(model)
    torch.testing.assert_close(full, pointwise)


def test_the_generated_graph_keeps_the_generation_branch(settings):
    model, _ = built(settings, item_graph="generated", score_content=False)
    assert model.content_reaches_score and model.use_contrastive and model.use_task_guided


def test_without_self_loops_an_item_missing_every_modality_keeps_its_id_embedding(settings):
    model, _ = built(settings, layer0_gate="none", item_graph="raw", item_graph_missing="none", score_content=False)
    observed = torch.zeros(model.n_modalities, model.n_items, dtype=torch.bool)
    for m in range(model.n_modalities):
        observed[m, model.content.observed_index(m)] = True
    adjacency = model.item_adjacency().to_coo().to_dense()
    missing_everywhere = ~observed.any(dim=0)
    assert missing_everywhere[1:].any() and observed.all(dim=0).any(), "the tiny data lost its mix of items"
    assert (adjacency[missing_everywhere] == 0).all() and (adjacency[:, missing_everywhere] == 0).all()
    assert (adjacency[observed.all(dim=0)].sum(dim=1) > 0).all()
    with torch.no_grad():
        lightgcn_items = super(type(model), model).id_embeddings()[1]
        items = model.id_embeddings()[1]
    torch.testing.assert_close(items[missing_everywhere], lightgcn_items[missing_everywhere])
    with pytest.raises(ValueError, match="item_graph_missing must be one of"):
        built(settings, item_graph_missing="loops")


def test_the_id_contrast_is_ncls_losses_on_the_same_embeddings(settings):
    ncl_settings = {"ssl_temp": 0.2, "ssl_reg": 1e-3, "proto_reg": 1e-2, "num_clusters": 4, "n_layers": 2}
    model, train = built(settings, layer0_gate="none", item_graph="none", score_content=False, id_contrast=True, ssl_alpha=0.5,
                         ssl_hyper_layers=1, id_noise_contrast=False, id_readout="all", **ncl_settings)
    config = build_config("NCL", "tiny", config_dict={"missing_rate": 0.5, **settings, **ncl_settings, "alpha": 0.5,
                                                       "hyper_layers": 1})
    ncl = get_model("NCL")(config, train._dataset)
    ncl.load_state_dict({"user_embedding.weight": model.user_embedding.weight.detach(),
                         "item_embedding.weight": model.item_embedding.weight.detach()})
    model.e_step()
    assert model.user_centroids.shape == (4, model.latent_dim) and model.item_2cluster.shape == (model.n_items,)
    for name in ("user_centroids", "user_2cluster", "item_centroids", "item_2cluster"):
        setattr(ncl, name, getattr(model, name))
    batch = next(iter(train))
    model.train()
    ncl.train()
    ours = model.calculate_loss(batch)
    theirs = ncl.calculate_loss(batch)
    assert len(ours) == 3
    for a, b in zip(ours, theirs):  # NCL adds 1e-7 to each degree before normalising: not bit-equal
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert ours[1] > 0 and ours[2] > 0
    sum(ours).backward()
    assert model.user_embedding.weight.grad.abs().sum() > 0
    full, pointwise = both_scores(model)
    torch.testing.assert_close(full, pointwise)


def test_the_id_contrast_trains_with_ncls_schedule_on_recboles_trainer(settings, tmp_path):
    from recbole.trainer import NCLTrainer, Trainer

    from recbole_ci2mg.compat import PrototypeEStepMixin
    from recbole_ci2mg.trainer import get_trainer

    model, train = built(settings, item_graph="raw", score_content=False, id_contrast=True, num_clusters=3,
                         warm_up_step=1, epochs=2, checkpoint_dir=str(tmp_path))
    config = train.config
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    assert isinstance(trainer, (PrototypeEStepMixin, Trainer)) and not isinstance(trainer, NCLTrainer)
    assert model.user_centroids is None
    trainer.fit(train, valid_data=None, saved=False)
    assert model.user_centroids.shape[0] == 3 and len(trainer.train_loss_dict) == 2
    warm_up, after = trainer._train_epoch(train, 0), trainer._train_epoch(train, 1)  # per-term loss totals
    assert len(warm_up) == 2 and len(after) == 3  # the first warm_up_step epochs leave the prototype term out
    with pytest.raises(ValueError, match="num_clusters"):
        built(settings, id_contrast=True, num_clusters=10_000)


def fitted(settings, tmp_path, trainer_class=None, model="NCL", **overrides):
    from recbole_ci2mg.trainer import get_trainer

    ours = {"n_prototypes": 4, "ot_block_size": 16, "missing_rate": 0.5, "id_contrast": True} if model != "NCL" else {}
    config = build_config(model, "tiny", config_dict={
        "num_clusters": 3, "warm_up_step": 1, "m_step": 1, "epochs": 3, "checkpoint_dir": str(tmp_path),
        **ours, **settings, **overrides})
    train, _, _ = data_preparation(config, create_dataset(config))
    init_seed(config["seed"], config["reproducibility"])
    built_model = get_model(model)(config, train._dataset)
    trainer_class = trainer_class or get_trainer(config["MODEL_TYPE"], config["model"])
    trainer = trainer_class(config, built_model)
    init_seed(config["seed"], config["reproducibility"])
    trainer.fit(train, valid_data=None, saved=False)
    return trainer, train


def test_ncl_trains_as_under_recboles_ncltrainer(settings, tmp_path):
    from recbole.trainer import NCLTrainer

    from recbole_ci2mg.compat import PlainCheckpointMixin
    from recbole_ci2mg.trainer import EpochStatsMixin, PerUserScoresMixin

    recboles = type("NCLTrainer", (EpochStatsMixin, PerUserScoresMixin, PlainCheckpointMixin, NCLTrainer), {})
    ours, _ = fitted(settings, tmp_path)
    theirs, _ = fitted(settings, tmp_path, recboles)
    assert not isinstance(ours, NCLTrainer)
    assert ours.train_loss_dict == theirs.train_loss_dict  # same E-steps, same warm-up, same steps
    for name, value in theirs.model.state_dict().items():
        torch.testing.assert_close(ours.model.state_dict()[name], value, rtol=0, atol=0)


@pytest.mark.parametrize("model", ["NCL", "CI2MG-S"])
def test_dynamic_negative_sampling_reaches_ncls_schedule(settings, tmp_path, model):
    dynamic = {"distribution": "uniform", "sample_num": 1, "alpha": 1.0, "dynamic": True, "candidate_num": 2}
    trainer, train = fitted(settings, tmp_path, model=model, train_neg_sample_args=dynamic)
    assert train.model is trainer.model  # RecBole's NCLTrainer.fit never hands it over
    assert len(trainer.train_loss_dict) == 3


@pytest.mark.parametrize("id_contrast", [True, False])
def test_ncls_schedule_runs_e_steps_only_for_a_model_with_prototypes(settings, tmp_path, monkeypatch, id_contrast):
    from recbole_ci2mg.model.ci2mg_structure import CI2MGS

    calls, original = [], CI2MGS.e_step
    monkeypatch.setattr(CI2MGS, "e_step", lambda self: (calls.append(1), original(self)))
    fitted(settings, tmp_path, model="CI2MG-S", id_contrast=id_contrast)
    assert len(calls) == (3 if id_contrast else 0)  # m_step 1, 3 epochs


def test_ncls_schedule_names_a_bad_setting(settings, tmp_path):
    with pytest.raises(ValueError, match="m_step"):
        fitted(settings, tmp_path, m_step=0)


def test_without_the_id_contrast_the_loss_is_one_term(settings):
    model, train = built(settings, id_contrast=False)
    model.train()
    model.e_step()  # the trainer calls it every m_step epochs: nothing to cluster
    assert torch.is_tensor(model.calculate_loss(next(iter(train))))
    assert not hasattr(model, "user_centroids")


def test_an_unseen_item_is_its_graph_neighbours_alone(tmp_path):
    from recbole_ci2mg.model.ci2mg import CI2MG

    splits, clusters = planted_interactions()
    unseen = sorted({i for _, i in splits["valid"]})[:2]  # no training interaction: valid (or test) ones only
    splits["train"] = [(u, i) for u, i in splits["train"] if i not in unseen]
    v = np.eye(4, dtype=np.float32)[clusters] + 0.01 * np.random.default_rng(1).standard_normal((40, 4)).astype(np.float32)
    settings = write_benchmark(tmp_path / "data", "tiny", splits, {"v": (v, None)})
    own, train = built(settings, layer0_gate="none", item_graph="raw", score_content=False, missing_rate=0.0)
    graph, _ = built(settings, layer0_gate="none", item_graph="raw", score_content=False, missing_rate=0.0, unseen_items="graph")
    ids = torch.as_tensor(train._dataset.token2id("item_id", [str(i) for i in unseen]))
    assert not graph.seen_items[ids].any() and graph.seen_items[1:].sum() == graph.n_items - 1 - len(unseen)
    items = graph.id_embeddings()[1]
    adjacency = graph.item_adjacency().to_coo().to_dense()
    seen_weights = graph.item_embedding.weight * graph.seen_items
    torch.testing.assert_close(items[ids], (adjacency @ seen_weights)[ids])  # nothing of its own
    assert (adjacency[ids][:, ids] > 0).any(), "the unseen items lost their self-loops: the test would pass trivially"
    items.sum().backward()
    assert (graph.item_embedding.weight.grad[ids] == 0).all()  # no score reads an unseen item's own embedding
    lightgcn = CI2MG.id_embeddings(own)[1].detach()  # seen items: Eq. 2 plus the graph over seen neighbours
    torch.testing.assert_close(items.detach(), lightgcn * graph.seen_items + (adjacency @ seen_weights).detach())
    with pytest.raises(ValueError, match="unseen_items graph"):
        built(settings, item_graph="none", unseen_items="graph")


def test_the_neighbour_reading_tells_content_neighbours_from_random_ones(settings):
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("item_graph_neighbours", REPO / "benchmarks" / "item_graph_neighbours.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rows = {row[:2]: row for rate in (0.0, 0.5) for row in script.reading("tiny", rate, 2020, 3, settings)}
    full, half = rows[0.0, "v"], rows[0.5, "v"]
    assert full[2] == full[3] == 40 and full[4] == 1.0  # every item linked at 0 % missing
    assert 0 < half[2] < 40 and 0 < half[4] < 1  # only the observed items at 50 %
    # v follows the planted clusters users draw from, t is noise: only v's neighbours share users
    assert full[5][1] > 1.5 * full[6][1]
    assert rows[0.0, "t"][5][1] < full[5][1]
    imputed = {row[1]: row for row in script.reading("tiny", 0.5, 2020, 3, settings, item_graph="imputed")}
    assert half[2] < imputed["v"][2] <= 40  # feature propagation links items whose row was missing
    # the interactions graph's neighbours are all its own, and the planted clusters put v's among them more than t's
    interactions = {row[1]: row for row in script.reading("tiny", 0.5, 2020, 3, settings, item_graph="interactions")}
    assert interactions["v"][7] == interactions["t"][7] == 1.0
    assert 0 <= rows[0.0, "t"][7] < full[7] < 1.0


def test_a_contrast_graph_leaves_the_score_alone_and_adds_its_infonce(settings):
    model, train = built(settings, item_graph="raw", item_graph_missing="none", score_content=False,
                         item_graph_role="contrast", graph_contrast_reg=0.5, ssl_temp=0.2)
    plain, _ = built(settings, item_graph="none", score_content=False)
    plain.load_state_dict(model.state_dict(), strict=False)
    batch = next(iter(train))
    model.train()
    plain.train()
    with torch.no_grad():
        for a, b in zip(model.id_embeddings(), plain.id_embeddings()):
            torch.testing.assert_close(a, b)  # the graph is in no score
        loss, bpr = model.calculate_loss(batch), plain.calculate_loss(batch)
        adjacency = model.item_adjacency().to_coo().to_dense()
        own = torch.arange(model.n_items)
        linked = ((adjacency > 0) & (own.view(-1, 1) != own.view(1, -1))).any(dim=1)
        assert linked.any() and not linked[1:].all(), "the tiny data lost its mix of linked and unlinked items"
        neighbourhood = torch.nn.functional.normalize(adjacency @ model.item_embedding.weight)
        expected = 0.0
        for i in torch.unique(batch[model.ITEM_ID]).tolist():
            if linked[i]:  # InfoNCE: the item's own neighbourhood among every item's
                logits = torch.nn.functional.normalize(model.item_embedding.weight[i], dim=0) @ neighbourhood.T / 0.2
                expected = expected - torch.log_softmax(logits, dim=0)[i]
    assert expected != 0.0
    torch.testing.assert_close(loss, bpr + 0.5 * expected)
    with pytest.raises(ValueError, match="item_graph_role contrast needs an item-item graph"):
        built(settings, item_graph="none", item_graph_role="contrast")
    with pytest.raises(ValueError, match="item_graph_role must be one of"):
        built(settings, item_graph_role="both")


def test_the_noise_contrast_is_simgcls_infonce_on_the_scored_embeddings(settings):
    graph = {"item_graph": "raw", "item_graph_missing": "none", "score_content": False, "id_readout": "all"}
    model, train = built(settings, layer0_gate="none", **graph, id_noise_contrast=True, noise_reg=0.5, noise_eps=0.1, noise_temp=0.2)
    plain, _ = built(settings, layer0_gate="none", **graph, id_noise_contrast=False)
    plain.load_state_dict(model.state_dict())
    batch = next(iter(train))
    model.train()
    plain.train()
    with torch.no_grad():
        for a, b in zip(model.id_embeddings(), plain.id_embeddings()):
            torch.testing.assert_close(a, b)  # the noise is in the loss only
        torch.manual_seed(0)
        loss = model.calculate_loss(batch)
        bpr = plain.calculate_loss(batch)
        torch.manual_seed(0)  # the same draws, in the same order: first view, then second
        ego = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
        graph_term = model.item_adjacency() @ model.item_embedding.weight
        views = []
        for _ in range(2):
            mean = torch.stack(lightgcn_layers(model.norm_adj_matrix, ego, model.n_layers, 0.1)).mean(dim=0)
            users, items = torch.split(mean, [model.n_users, model.n_items])
            views.append((users, items + graph_term))
        assert not torch.allclose(views[0][0], views[1][0])
        expected = 0.0
        for side, ids in enumerate((batch[model.USER_ID], batch[model.ITEM_ID])):
            distinct = torch.unique(ids).tolist()
            first = torch.nn.functional.normalize(views[0][side][distinct])
            second = torch.nn.functional.normalize(views[1][side][distinct])
            terms = [-torch.log_softmax(first[row] @ second.T / 0.2, dim=0)[row] for row in range(len(distinct))]
            expected = expected + sum(terms) / len(distinct)
    torch.testing.assert_close(loss, bpr + 0.5 * expected)
    with pytest.raises(ValueError, match="id_noise_contrast needs noise_eps > 0"):
        built(settings, id_noise_contrast=True, noise_eps=0.0)


def test_the_noise_contrast_leaves_ncls_terms_on_the_clean_layers(settings):
    ncl_settings = {"item_graph": "none", "score_content": False, "id_contrast": True, "num_clusters": 4}
    both, train = built(settings, **ncl_settings, id_noise_contrast=True, noise_reg=0.5)
    ncl_only, _ = built(settings, **ncl_settings, id_noise_contrast=False)
    ncl_only.load_state_dict(both.state_dict())
    both.e_step()
    for name in ("user_centroids", "user_2cluster", "item_centroids", "item_2cluster"):
        setattr(ncl_only, name, getattr(both, name))
    batch = next(iter(train))
    both.train()
    ncl_only.train()
    with torch.no_grad():
        ours, theirs = both.calculate_loss(batch), ncl_only.calculate_loss(batch)
    assert ours[0] > theirs[0]  # the noise term, in the first term
    torch.testing.assert_close(ours[1:], theirs[1:])  # NCL's structure and prototype terms, unperturbed


def test_noise_readout_takes_the_views_from_other_layers_than_the_score(settings):
    noise = {"item_graph": "none", "score_content": False, "noise_reg": 0.5, "noise_eps": 0.1}
    mixed, train = built(settings, **noise, id_readout="all", id_noise_contrast=True, noise_readout="propagated")
    propagated, _ = built(settings, **noise, id_readout="propagated", id_noise_contrast=True)
    scored_all, _ = built(settings, **noise, id_readout="all", id_noise_contrast=False)
    scored_propagated, _ = built(settings, **noise, id_readout="propagated", id_noise_contrast=False)
    for other in (propagated, scored_all, scored_propagated):
        other.load_state_dict(mixed.state_dict())
        other.train()
    mixed.train()
    batch = next(iter(train))
    with torch.no_grad():
        for a, b in zip(mixed.id_embeddings(), scored_all.id_embeddings()):
            torch.testing.assert_close(a, b)  # the score reads layers 0..L
        torch.manual_seed(0)
        ours = mixed.calculate_loss(batch) - scored_all.calculate_loss(batch)
        torch.manual_seed(0)  # the same draws: the views of SimGCL's readout
        theirs = propagated.calculate_loss(batch) - scored_propagated.calculate_loss(batch)
        torch.manual_seed(0)
        with_layer_0 = built(settings, **noise, id_readout="all", id_noise_contrast=True)[0]
        with_layer_0.load_state_dict(mixed.state_dict())
        with_layer_0.train()
        scored = with_layer_0.calculate_loss(batch) - scored_all.calculate_loss(batch)
    assert ours > 0
    torch.testing.assert_close(ours, theirs)
    assert not torch.isclose(ours, scored)  # the default (scored) keeps layer 0 in the views
    with pytest.raises(ValueError, match="noise_readout must be one of"):
        built(settings, id_noise_contrast=True, noise_readout="last")
    with pytest.raises(ValueError, match="noise_readout propagated reads layers 1..n_layers"):
        built(settings, id_readout="all", id_noise_contrast=True, noise_readout="propagated", n_layers=0)


def test_with_simgcls_readout_and_no_graph_the_noise_contrast_is_simgcl(settings):
    simgcl_settings = {"n_layers": 2, "reg_weight": 1e-3}
    model, train = built(settings, layer0_gate="none", item_graph="none", score_content=False, id_readout="propagated",
                         id_noise_contrast=True, noise_reg=0.3, noise_eps=0.2, noise_temp=0.5, **simgcl_settings)
    config = build_config("SimGCL", "tiny", config_dict={"missing_rate": 0.5, **settings, **simgcl_settings,
                                                          "cl_weight": 0.3, "eps": 0.2, "cl_temperature": 0.5})
    simgcl = get_model("SimGCL")(config, train._dataset)
    simgcl.load_state_dict({"user_embedding.weight": model.user_embedding.weight.detach(),
                            "item_embedding.weight": model.item_embedding.weight.detach()})
    batch = next(iter(train))
    model.train()
    simgcl.train()
    torch.manual_seed(0)
    ours = model.calculate_loss(batch)
    torch.manual_seed(0)
    theirs = simgcl.calculate_loss(batch)
    torch.testing.assert_close(ours, theirs)
    model.eval()
    simgcl.eval()
    torch.testing.assert_close(both_scores(model)[0], both_scores(simgcl)[0])
    with pytest.raises(ValueError, match="id_readout must be one of"):
        built(settings, id_readout="last")
    with pytest.raises(ValueError, match="id_readout propagated reads layers 1..n_layers"):
        built(settings, id_readout="propagated", n_layers=0)


def test_layer0_gate_adds_each_nodes_own_embedding_by_its_training_degree(settings):
    common = {"item_graph": "none", "score_content": False, "id_readout": "propagated", "id_noise_contrast": False}
    gated, train = built(settings, **common, layer0_gate="degree", layer0_gate_degree=4.0)
    plain, _ = built(settings, **common, layer0_gate="none")
    plain.load_state_dict(gated.state_dict())
    matrix = train._dataset.inter_matrix(form="csr")
    user_degree = torch.tensor(np.asarray(matrix.sum(axis=1)).ravel(), dtype=torch.float32)
    item_degree = torch.tensor(np.asarray(matrix.sum(axis=0)).ravel(), dtype=torch.float32)
    assert item_degree[0] == 0 and (user_degree[1:] > 0).all()  # padding item 0: no weight at all
    with torch.no_grad():
        (user_g, item_g), (user_p, item_p) = gated.id_embeddings(), plain.id_embeddings()
    expected_user = user_p + (user_degree / (user_degree + 4.0)).unsqueeze(1) * gated.user_embedding.weight
    expected_item = item_p + (item_degree / (item_degree + 4.0)).unsqueeze(1) * gated.item_embedding.weight
    torch.testing.assert_close(user_g, expected_user)
    torch.testing.assert_close(item_g, expected_item)
    torch.testing.assert_close(item_g[0], item_p[0])
    constant, _ = built(settings, **common, layer0_gate="constant", layer0_gate_weight=0.3)
    constant.load_state_dict(gated.state_dict())
    with torch.no_grad():
        user_c, item_c = constant.id_embeddings()
    torch.testing.assert_close(user_c, user_p + 0.3 * gated.user_embedding.weight)
    torch.testing.assert_close(item_c, item_p + 0.3 * gated.item_embedding.weight)
    with pytest.raises(ValueError, match="layer0_gate must be one of"):
        built(settings, layer0_gate="always")
    with pytest.raises(ValueError, match="layer0_gate_degree must be > 0"):
        built(settings, layer0_gate="degree", layer0_gate_degree=0)
    with pytest.raises(ValueError, match="layer0_gate_weight must be > 0"):
        built(settings, layer0_gate="constant", layer0_gate_weight=-1)


def test_item_graph_gate_weights_each_items_graph_term_by_its_training_degree(settings):
    common = {"item_graph": "imputed+interactions", "item_graph_missing": "none", "score_content": False,
              "id_noise_contrast": False}
    gated, train = built(settings, **common, item_graph_gate="degree", item_graph_gate_degree=8.0)
    plain, _ = built(settings, **common, item_graph_gate="none")
    plain.load_state_dict(gated.state_dict())
    without, _ = built(settings, **{**common, "item_graph": "none"})
    # the same Eq. 2 and layer-0 gate, no graph term
    without.load_state_dict({k: v for k, v in gated.state_dict().items() if not k.startswith("graph_")}, strict=False)
    degree = torch.tensor(np.asarray(train._dataset.inter_matrix(form="csr").sum(axis=0)).ravel(), dtype=torch.float32)
    assert degree.unique().numel() > 3, "the tiny data's items have too few degrees to tell the weights apart"
    with torch.no_grad():
        (user_g, item_g), (user_p, item_p), (user_0, item_0) = (m.id_embeddings() for m in (gated, plain, without))
        graph_term = item_p - item_0
        assert graph_term.abs().sum() > 0
        torch.testing.assert_close(item_g, item_0 + (8.0 / (degree + 8.0)).unsqueeze(1) * graph_term)
        torch.testing.assert_close(user_g, user_p)
    with pytest.raises(ValueError, match="item_graph_gate must be one of"):
        built(settings, item_graph_gate="tail")
    with pytest.raises(ValueError, match="item_graph_gate_degree must be > 0"):
        built(settings, item_graph_gate="degree", item_graph_gate_degree=0)
    with pytest.raises(ValueError, match="shape the graph term of item_graph_role propagate"):  # nothing to weight
        built(settings, item_graph="none", item_graph_gate="degree")


def test_item_graph_source_scored_propagates_the_scored_embeddings(settings):
    common = {"item_graph": "imputed+interactions", "item_graph_missing": "none", "score_content": False,
              "id_noise_contrast": False, "id_readout": "propagated", "layer0_gate": "degree"}
    scored, _ = built(settings, **common, item_graph_source="scored")
    without, _ = built(settings, **{**common, "item_graph": "none"})
    without.load_state_dict({k: v for k, v in scored.state_dict().items() if not k.startswith("graph_")}, strict=False)
    with torch.no_grad():
        _, item_s = scored.id_embeddings()
        _, item_0 = without.id_embeddings()  # Eq. 2 with the layer-0 gate: what is scored without a graph
        torch.testing.assert_close(item_s, item_0 + scored.item_adjacency() @ item_0)
        layer0 = item_0 + scored.item_adjacency() @ scored.item_embedding.weight  # the default source
        assert not torch.allclose(item_s, layer0)
    with pytest.raises(ValueError, match="item_graph_source must be one of"):
        built(settings, item_graph_source="final")
    with pytest.raises(ValueError, match="shape the graph term of item_graph_role propagate"):  # nothing to source
        built(settings, item_graph="imputed", item_graph_role="contrast", item_graph_source="scored")


def test_the_imputed_graph_completes_missing_rows_by_feature_propagation(settings):
    model, _ = built(settings, item_graph="imputed", item_graph_imputation_steps=2, item_graph_missing="none",
                     score_content=False)
    R = torch.from_numpy(model.interaction_matrix.toarray() > 0).float()  # [N_U, N_V]
    user_degree, item_degree = R.sum(1, keepdim=True), R.sum(0).unsqueeze(1)
    for m in range(model.n_modalities):
        index, rows = model.content.observed_index(m), model.content.observed_features(m)
        known = torch.zeros(model.n_items, dtype=torch.bool)
        known[index] = True
        assert (~known[1:]).any() and (item_degree[~known] > 0).any(), "the tiny data lost its missing items"
        expected = torch.zeros(model.n_items, rows.shape[1]).index_copy(0, index, rows)
        for _ in range(2):  # by hand: item <- mean over its users of their items' mean; observed rows reset
            users = R @ expected / user_degree.clamp(min=1)
            spread = torch.where(item_degree > 0, R.T @ users / item_degree.clamp(min=1), expected)
            expected = torch.where(known.unsqueeze(1), expected, spread)
        values, nodes = model.propagated_features(m)
        torch.testing.assert_close(values, expected)
        torch.testing.assert_close(values[index], rows)  # observed rows untouched
        reached = expected.abs().sum(dim=1) > 0
        assert torch.equal(nodes, torch.nonzero(reached).squeeze(1))
        assert reached[~known].any()  # missing items joined the graph
    raw, _ = built(settings, item_graph="raw", item_graph_missing="none", score_content=False)
    assert model.linked_items().sum() > raw.linked_items().sum()
    with pytest.raises(ValueError, match="item_graph_imputation_steps must be at least 1"):
        built(settings, item_graph="imputed", item_graph_imputation_steps=0)


@pytest.mark.parametrize("missing", ["none", "self"])
def test_the_interactions_graph_links_items_by_their_training_users(settings, missing):
    k = 4
    model, _ = built(settings, item_graph="interactions", item_graph_k=k, item_graph_missing=missing,
                     score_content=False)
    R = torch.from_numpy(model.interaction_matrix.toarray() > 0).float()  # [N_U, N_V]
    norms = R.norm(dim=0)
    cosine = (R.T @ R) / (norms.unsqueeze(1) * norms.unsqueeze(0)).clamp(min=1e-12)  # by hand
    seen = norms > 0
    assert (~seen).any() and seen.sum() > k, "the tiny data lost its items without interactions"
    neighbours, weights = model.graph_neighbours, model.graph_weights
    assert torch.equal(neighbours[0], neighbours[1]) and torch.equal(weights[0], weights[1])  # no content read
    for item in range(model.n_items):
        row, w = neighbours[0, item], weights[0, item]
        if not seen[item]:  # outside the graph: its self-loop or an empty row
            assert row[0] == item and w[0] == (1.0 if missing == "self" else 0.0) and (w[1:] == 0).all()
            continue
        assert row[0] == item and w[0] == 1.0  # the row itself first, as in the feature graphs
        others = cosine[item].clone()
        others[item] = 0
        expected = torch.sort(others[others > 0], descending=True).values[: k - 1]
        chosen = w[1:] > 0
        torch.testing.assert_close(torch.sort(w[1:][chosen], descending=True).values, expected, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(w[1:][chosen], cosine[item, row[1:][chosen]], rtol=1e-4, atol=1e-6)
        assert seen[row[1:][chosen]].all()
    other_mask, _ = built(settings, item_graph="interactions", item_graph_k=k, item_graph_missing=missing,
                          score_content=False, missing_rate=0.0)
    assert torch.equal(other_mask.graph_neighbours, neighbours) and torch.equal(other_mask.graph_weights, weights)


def test_the_interactions_graph_can_join_the_content_graphs(settings):
    content, _ = built(settings, item_graph="raw", item_graph_missing="none", score_content=False)
    cf, _ = built(settings, item_graph="interactions", item_graph_missing="none", score_content=False)
    both, _ = built(settings, item_graph="raw+interactions", item_graph_missing="none", score_content=False)
    M = content.n_modalities
    assert both.graph_neighbours.shape[0] == M + 1
    assert torch.equal(both.graph_neighbours[:M], content.graph_neighbours)
    assert torch.equal(both.graph_neighbours[M], cf.graph_neighbours[0])
    assert torch.equal(both.graph_weights[M], cf.graph_weights[0])
    dense = lambda model: model.item_adjacency().to_coo().to_dense()  # noqa: E731
    # S is the mean of the G normalised graphs: the content model's M and the content-free one
    torch.testing.assert_close(dense(both), (M * dense(content) + dense(cf)) / (M + 1))
    generated, _ = built(settings, item_graph="generated+interactions", item_graph_missing="none", score_content=False)
    generated.train()  # rebuilds the M generated graphs, and keeps the interactions graph beside them
    assert generated.graph_neighbours.shape[0] == M + 1
    assert torch.equal(generated.graph_neighbours[M], cf.graph_neighbours[0])
    assert torch.equal(generated.graph_weights[M], cf.graph_weights[0])
    for wrong in ("none+interactions", "interactions+interactions", "raw+imputed", "raw+"):
        with pytest.raises(ValueError, match="followed by \\+interactions"):
            built(settings, item_graph=wrong)


def test_item_graph_mix_learned_weighs_each_graph_by_a_trained_softmax(settings):
    common = {"item_graph": "imputed+interactions", "item_graph_missing": "none", "score_content": False,
              "id_noise_contrast": False}
    learned, train = built(settings, **common, item_graph_mix="learned")
    mean, _ = built(settings, **common, item_graph_mix="mean")
    mean.load_state_dict({k: v for k, v in learned.state_dict().items() if k != "item_graph_logits"})
    graphs = learned.item_adjacencies()
    assert learned.item_graph_logits.shape == (len(graphs),) == (3,)  # two modalities and the interactions graph
    values = learned.item_embedding.weight
    with torch.no_grad():  # from zeros the softmax is the mean: the two models score alike
        torch.testing.assert_close(learned.id_embeddings()[1], mean.id_embeddings()[1])
        learned.item_graph_logits.copy_(torch.tensor([2.0, 0.0, -1.0]))
        alpha = torch.softmax(learned.item_graph_logits, dim=0)
        expected = sum(a * (g @ values) for a, g in zip(alpha, graphs))
        torch.testing.assert_close(learned.propagate_on_item_graph(values), expected)
        assert not torch.allclose(expected, mean.item_adjacency() @ values)
    learned.train()
    loss = learned.calculate_loss(next(iter(train)))
    loss = loss if torch.is_tensor(loss) else sum(loss)
    loss.backward()
    assert learned.item_graph_logits.grad is not None and learned.item_graph_logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="item_graph_mix must be one of"):
        built(settings, item_graph_mix="max")
    with pytest.raises(ValueError, match="shape the graph term of item_graph_role propagate"):
        built(settings, item_graph="none", item_graph_mix="learned")
    with pytest.raises(ValueError, match="weighs two or more different graphs"):  # M copies of one graph
        built(settings, item_graph="interactions", item_graph_mix="learned")
