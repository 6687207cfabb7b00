import pytest
import yaml

from czii_kit.config import class_dict, load_config, save_config
from czii_kit.errors import ConfigError
from czii_kit.particles import CLASS_NAMES


def test_base_and_variant_merge():
    base = load_config()
    quick = load_config("cpu_quick")
    assert quick["model"]["name"] == "resunet" and base["model"]["name"] == "unet_smp"
    assert quick["train"]["lr"] != base["train"]["lr"]
    assert quick["train"]["weight_decay"] == base["train"]["weight_decay"]  # inherited
    assert "encoder_name" not in quick["model"]["args"]  # plug-in args replaced as a whole


def test_dotted_overrides_parse_yaml_values():
    cfg = load_config("cpu_quick", ["train.epochs=3", "model.args.filters=[8, 8, 8]", "peaks.topk=null",
                                    "classes.ribosome.threshold=0.7", "infer.tta=full"])
    assert cfg["train"]["epochs"] == 3 and cfg["model"]["args"]["filters"] == [8, 8, 8]
    assert cfg["peaks"]["topk"] is None and cfg["classes"]["ribosome"]["threshold"] == 0.7
    assert cfg["infer"]["tta"] == "full"


@pytest.mark.parametrize("override, message", [
    ("train.epoch=3", "did you mean 'train.epochs'"),
    ("nonsense=1", "unknown config key 'nonsense'"),
    ("classes.ferritin.threshold=0.1", "classes.ferritin"),
    ("train.epochs", "must look like key.sub=value"),
])
def test_override_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("cpu_quick", [override])


def test_variant_with_unknown_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batchsize: 3\n")
    with pytest.raises(ConfigError, match="train.batchsize"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config("no_such_config")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_resolved_config_round_trip(tmp_path):
    cfg = load_config("unet_effb3")
    save_config(cfg, tmp_path / "c.yaml")
    again = yaml.safe_load((tmp_path / "c.yaml").read_text())
    assert again == cfg
    assert load_config(tmp_path / "c.yaml") == cfg  # a saved config is itself a valid config


def test_per_class_values_in_one_place():
    cfg = load_config()
    assert list(class_dict(cfg, "threshold")) == list(CLASS_NAMES)


@pytest.mark.parametrize("name", ["cpu_quick", "unet_r34", "unet_effb3", "resunet_gpu"])
def test_shipped_variants_load(name):
    cfg = load_config(name)
    assert cfg["targets"]["stride"] in (1, 2)


def test_the_class_set_comes_from_the_data_and_travels_in_the_config():
    from czii_kit.config import particle_set, with_particle_set
    from czii_kit.particles import CZII, Particle, ParticleSet

    cfg = load_config("cpu_quick", ["classes.ribosome.threshold=0.45"])
    assert particle_set(cfg) == CZII  # the six, radius and weight from czii_kit.particles
    project = ParticleSet((Particle("ribosome", 150.0, 1.0), Particle("made-up", 80.0, 2.0)))
    resolved = with_particle_set(cfg, project)
    assert list(resolved["classes"]) == ["ribosome", "made-up"]  # the data's classes, in the data's order
    assert resolved["classes"]["ribosome"]["threshold"] == 0.45  # configured tunables are kept
    assert resolved["classes"]["made-up"] == {**cfg["class_defaults"], "radius": 80.0, "weight": 2.0}
    assert particle_set(resolved) == project
    with pytest.raises(ConfigError, match="'made-up' is not a CZII class, so give its radius"):
        load_config("cpu_quick", ["classes.made-up.threshold=0.2"])
    with pytest.raises(ConfigError, match=r"classes.ribosome: unknown key\(s\) \['treshold'\]"):
        load_config("cpu_quick", ["classes.ribosome.treshold=0.2"])
    with pytest.raises(ConfigError, match="classes.ribosome.threshold must be a number"):
        load_config("cpu_quick", ["classes.ribosome.threshold=high"])
