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
    ("train.epochs=two", r"train.epochs must be an integer, got 'two' \(like its default: --set train.epochs=\d+\)"),
    ("train.epochs=2.5", "train.epochs must be an integer, got 2.5"),
    ("train.lr=abc", "train.lr must be a number, got 'abc'"),
    ("train.amp=1", "train.amp must be true or false, got 1"),
    ("train.patch_size=[64,64,a]", r"train.patch_size must be a list of integers, got \[64, 64, 'a'\]"),
    ("augment.flips=z", "augment.flips must be a list of strings"),
    ("train.rehearsal=0.3", "train.rehearsal must be a mapping"),
    ("train.epochs=0", "train.epochs must be a number at least 1, got 0"),
    ("train.epochs=null", "train.epochs must be an integer, got None"),
    ("infer.overlap=1.5", r"infer.overlap must be a number in \[0.0, 0.95\], got 1.5"),
    ("infer.batch_size=-1", "infer.batch_size must be a number at least 1"),
    ("train.time_limit_min=-5", "train.time_limit_min must be a number at least 0.0, got -5"),
    ("peaks.kernel_frac=-1", "peaks.kernel_frac must be a number at least 0.0"),
    ("train.time_limit_min=abc", "train.time_limit_min must be a number at least 0.0, got 'abc'"),
    ("infer.overlap=.nan", "infer.overlap must be a number in"),
    ("post.dbscan.eps_frac={ribosome: abc}", "post.dbscan.eps_frac must be a number, got 'abc'"),
    ("post.merge={enabled: 5, radius_frac: 0.1}", "post.merge.enabled must be true or false, got 5"),
    ("post.merge={enable: true}", "unknown config key 'post.merge.enable'"),
    ("classes.ribosome.threshold=7", r"classes.ribosome.threshold must be a probability in \[0, 1\], got 7"),
])
def test_override_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("cpu_quick", [override])


def test_values_of_the_right_type_pass():
    """Ints where a number is asked for, null where the default is null, lists of the items' type, and 1e-3 (text
    to YAML 1.1) as the number it means on a command line."""
    assert [load_config("cpu_quick", [f"train.lr={v}"])["train"]["lr"] for v in ("1e-3", "2E-4", "+5e0")] == [
        0.001, 0.0002, 5.0]
    per_class = load_config("cpu_quick", ["post.dbscan.eps_frac={ribosome: 0.4, apo-ferritin: 0.5}"])
    assert per_class["post"]["dbscan"]["eps_frac"] == {"ribosome": 0.4, "apo-ferritin": 0.5}
    cfg = load_config("cpu_quick", ["train.lr=1", "train.time_limit_min=5", "train.init_from=null",
                                    "train.patch_size=[64,64,64]", "infer.overlap=0", "data.extra_recons=[wbp]"])
    assert cfg["train"]["lr"] == 1 and cfg["train"]["patch_size"] == [64, 64, 64] and cfg["infer"]["overlap"] == 0


def test_a_variant_file_is_type_checked_too(tmp_path):
    bad = tmp_path / "bad.yaml"
    ok = tmp_path / "ok.yaml"
    ok.write_text("train:\n  lr: 3e-4\n")  # written as people write it: a number, not YAML 1.1's text
    assert load_config(ok)["train"]["lr"] == 3e-4
    bad.write_text("train:\n  epochs: ten\n")
    with pytest.raises(ConfigError, match="train.epochs must be an integer, got 'ten'"):
        load_config(bad)
    orphan = tmp_path / "orphan.yaml"
    orphan.write_text("_base_: no_such_parent.yaml\n")
    with pytest.raises(ConfigError, match=r"orphan.yaml names _base_: no_such_parent.yaml, which is not a file"):
        load_config(orphan)


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
