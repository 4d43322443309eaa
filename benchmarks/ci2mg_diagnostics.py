"""Per-epoch diagnostics for CI2MG on tiktok (see benchmarks/results/ci2mg_tiktok_diagnosis.md).

Usage, from a scratch folder: python benchmarks/ci2mg_diagnostics.py EPOCHS --key=value ...
(--model=NAME picks the model, CI2MG by default; any other --key=value is a config setting).
"""
import sys, copy, json, time
from collections import defaultdict
import torch
from recbole.utils import init_seed, init_logger
from recbole.data import data_preparation
from recbole_ci2mg.quick_start import build_config, create_dataset
from recbole_ci2mg.registry import get_model
from recbole_ci2mg.settings import parse_overrides
from recbole_ci2mg.trainer import get_trainer

epochs = int(sys.argv[1])
cfg = {"missing_rate": 0.9, "show_progress": False, "epochs": epochs, **parse_overrides(sys.argv[2:])}
model_name = cfg.pop("model", "CI2MG")
config = build_config(model_name, "tiktok", config_dict=cfg)
init_seed(config["seed"], config["reproducibility"]); init_logger(config)
dataset = create_dataset(config)
train_data, valid_data, test_data = data_preparation(config, dataset)
init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
model = get_model(model_name)(config, train_data._dataset).to(config["device"])
trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
trainer.eval_collector.data_collect(train_data); trainer.train_epoch_seconds = []
d = model.latent_dim

rec = defaultdict(list)
model.mf_loss.register_forward_hook(lambda m, i, o: rec["bpr"].append(o.item()))
for name in ("reconstruction_loss", "contrastive_loss"):
    if hasattr(model, name):
        f = getattr(model, name)
        def wrap(*a, _f=f, _n=name):
            out = _f(*a); rec[_n].append(float(out)); return out
        setattr(model, name, wrap)

def valid_recall():
    return trainer.evaluate(valid_data, load_best_model=False)["recall@20"]

def with_cache(u, i):
    model.eval(); model.restore_user_e, model.restore_item_e = u, i
    r = valid_recall(); model.restore_user_e = model.restore_item_e = None; return r

print("config:", {k: config[k] for k in cfg}, flush=True)
for epoch in range(epochs):
    rec.clear(); t = time.perf_counter()
    trainer._train_epoch(train_data, epoch, show_progress=False)
    secs = time.perf_counter() - t
    r = valid_recall()
    out = {"epoch": epoch, "s": round(secs, 1), "valid_R20": round(r, 4)}
    out.update({k: round(sum(v) / len(v), 4) for k, v in rec.items()})
    with torch.no_grad():
        model.eval(); u, i, views = model.forward()
        parts = [(0, d)] + [(d * (m + 1), d * (m + 2)) for m in range(model.n_modalities)]
        g = torch.Generator().manual_seed(0)
        uu = torch.randint(1, model.n_users, (20000,), generator=g); ii = torch.randint(1, model.n_items, (20000,), generator=g)
        out["score_std_parts"] = [round((u[uu, a:b] * i[ii, a:b]).sum(1).std().item(), 3) for a, b in parts]
        out["item_norm_parts"] = [round(i[1:, a:b].norm(dim=1).mean().item(), 3) for a, b in parts]
        out["user_norm_parts"] = [round(u[1:, a:b].norm(dim=1).mean().item(), 3) for a, b in parts]
        ui = u.clone(); ui[:, d:] = 0
        out["R20_id_only"] = round(with_cache(ui, i), 4)
        um = u.clone(); um[:, :d] = 0
        out["R20_mod_only"] = round(with_cache(um, i), 4)
        for alpha in (0.1, 0.3):
            ua = u.clone(); ua[:, d:] *= alpha
            out[f"R20_mod_x{alpha}"] = round(with_cache(ua, i), 4)
        # BN in train mode (batch statistics), state saved and restored
        if getattr(model, "use_task_guided", False):
            saved = copy.deepcopy(model.state_dict())
            gen_state = model.transport.generator.get_state() if model.use_inter else None
            model.train(); ut, it, _ = model.forward()
            out["R20_trainmodeBN"] = round(with_cache(ut, it), 4)
            out["Z_train_vs_eval_reldiff"] = round(((it - i)[:, d:].norm() / i[:, d:].norm()).item(), 4)
            model.load_state_dict(saved)
            if gen_state is not None: model.transport.generator.set_state(gen_state)
    print(json.dumps(out), flush=True)
