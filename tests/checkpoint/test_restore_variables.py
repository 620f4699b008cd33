"""Reading a run's weights with a model config that does not match the checkpoint: Orbax's
partial restore returns the request's placeholder for a leaf the checkpoint lacks, and
restore_variables must turn that into one clear error, not hand out a ShapeDtypeStruct."""

import dataclasses
import importlib.util

import jax
import pytest

from lingjax import configs
from lingjax.checkpoint import Checkpointer, CheckpointError
from lingjax.checkpoint.params import kernels_for_here
from lingjax.checkpoint.run import read_run_config, restore_variables
from lingjax.configs import to_json
from lingjax.train import init_state, make_optimizer


def test_a_leaf_missing_from_the_checkpoint_is_refused_by_name(tmp_path):
    cfg = configs.get("tiny-v2", **{"model.num_layers": 2, "model.num_mtp_layers": 0})
    tx = make_optimizer(cfg.train.optimizer_config())
    state = jax.jit(lambda k: init_state(cfg.model, tx, k))(jax.random.key(0))
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(3, state)
    ckpt.wait()
    ckpt.close()
    same = restore_variables(str(tmp_path), 3, cfg.model)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(same))
    with_mtp = configs.get("tiny-v2", **{"model.num_layers": 2, "model.num_mtp_layers": 1})
    with pytest.raises(CheckpointError, match=r"lacks .*mtp.* written for another architecture"):
        restore_variables(str(tmp_path), 3, with_mtp.model)


def test_readers_swap_kernels_this_machine_cannot_run_for_auto(tmp_path):
    # A run trained on a GPU with cuDNN attention and tokamax experts, read on this CPU: the
    # readers compute with what runs here (tokamax only where it is installed); pallas stays.
    cfg = configs.get("tiny", **{"model.attention.impl": "cudnn", "model.moe.impl": "tokamax"})
    (tmp_path / "config.json").write_text(to_json(cfg))
    (tmp_path / "checkpoints").mkdir()
    here = read_run_config(tmp_path).model
    tokamax = "tokamax" if importlib.util.find_spec("tokamax") else "auto"
    assert (here.attention.impl, here.moe.impl) == ("auto", tokamax)
    assert here.architecture() == cfg.model.architecture()
    pallas = dataclasses.replace(cfg.model.moe, impl="pallas")
    assert kernels_for_here(dataclasses.replace(cfg.model, moe=pallas)).moe.impl == "pallas"
