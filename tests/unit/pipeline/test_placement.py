"""GPU placement checked before anything starts: no learner on a generator's GPU, no tensor-parallel
engine with the wrong number of GPUs."""

import pytest

from pipeline.config import ConfigError, from_dict, load
from pipeline.placement import check_placement, learner_gpus
from tests.conftest import ROOT


def _cfg(devices, tp=1, learner_device=""):
    return from_dict({"generator": {"devices": devices, "tensor_parallel_size": tp},
                      "learner": {"device": learner_device}})


def test_the_learner_on_a_generators_gpu_is_refused_naming_the_fields():
    with pytest.raises(ConfigError, match=r"GPU 0.*generator.devices\[0\].*learner.device"):
        check_placement(_cfg(["0", "1"]), visible=None)  # "" is cuda:0: generator 0's card
    check_placement(_cfg(["0", "1"], learner_device="cuda:4"), visible=None)
    with pytest.raises(ConfigError, match=r"GPU 5.*generator.devices\[1\]"):
        check_placement(_cfg(["4", "5"], learner_device="cuda:1"), visible="4,5,6,7")  # cuda:1 is physical 5
    with pytest.raises(ConfigError, match="under torchrun"):
        check_placement(_cfg(["0,1", "2,3"], tp=2), visible="2,3,4,5", world=2)  # ranks on 2 and 3
    check_placement(_cfg(["0,1", "2,3"], tp=2), visible="4,5,6,7", world=4)
    check_placement(_cfg(["0"]), visible=None, cuda=False)  # no GPU here: nothing to collide
    joining = from_dict({"generator": {"devices": ["0"], "count": 0}})  # generators join from other nodes
    check_placement(joining, visible=None)


def test_a_device_list_that_does_not_hold_the_tensor_parallel_size_is_refused():
    with pytest.raises(ConfigError, match=r"generator.devices\[1\] = '2' holds 1 GPU.*tensor_parallel_size = 2"):
        check_placement(_cfg(["0,1", "2"], tp=2, learner_device="cuda:7"), visible=None)


def test_learner_gpus_maps_local_indices_to_physical_ones():
    assert learner_gpus("cuda:1", "4,5,6") == ["5"]
    assert learner_gpus("cpu", None) == [] and learner_gpus("", None) == ["0"]
    assert learner_gpus("", "6,7", world=2) == ["6", "7"]


def test_one_gpu_for_both_is_a_choice_with_room_left_for_the_learner():
    """Sharing a card is refused by accident and allowed on purpose: weights through host memory
    (NCCL cannot put two ranks on one GPU) and a vLLM share that leaves the learner room."""
    def one(**over):
        d = {"generator": {"devices": ["0"], "gpu_memory_utilization": 0.3}, "learner": {"device": "cuda:0"},
             "weights": {"backend": "gloo"}}
        for section, fields in over.items():
            d[section].update(fields)
        return from_dict(d)

    check_placement(one(), visible=None)
    with pytest.raises(ConfigError, match=r"GPU 0.*weights.backend"):
        check_placement(one(weights={"backend": "auto"}), visible=None)
    with pytest.raises(ConfigError, match=r"gpu_memory_utilization = 0.9"):
        check_placement(one(generator={"gpu_memory_utilization": 0.9}), visible=None)
    shipped = load([ROOT / "configs" / "gpu" / "one-gpu-qwen2.5-0.5b.toml"], ["--model.path", str(ROOT)])  # any folder
    check_placement(shipped, visible=None)


def test_nccl_asked_for_with_generators_on_the_learners_gpu_is_refused():
    """No generator.devices on a CUDA machine: a launched generator sees the learner's GPU."""
    with pytest.raises(ConfigError, match=r"weights.backend = \"nccl\" with no generator.devices"):
        check_placement(from_dict({"weights": {"backend": "nccl"}}), visible=None)
    check_placement(from_dict({}), visible=None)  # auto: the learner picks gloo (learner/weights/links.py)
    check_placement(from_dict({"weights": {"backend": "nccl"}, "generator": {"count": 0}}), visible=None)  # joiners
