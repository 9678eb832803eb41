"""The task registry, tested with fake distributions discovered through the real
`importlib.metadata`: a temporary folder on sys.path holding `<name>-<version>.dist-info/`
folders (METADATA + entry_points.txt) and the modules their entry points name."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bertzoo.cli import main
from bertzoo.tasks import registry
from bertzoo.tasks.registry import ENTRY_POINT_GROUP, TaskError, TaskRegistry

BUILT_IN = {"classification", "ner", "qa"}
# Whatever is installed besides (the example plugin after `make install`, maybe others).
INSTALLED = set(TaskRegistry().names())
assert BUILT_IN <= INSTALLED

# A valid task module: a TaskSpec reusing classification's classes under another name.
GOOD_MODULE = """
from bertzoo.tasks import TaskSpec
from bertzoo.tasks.classification import (ClassificationDataModule, ClassificationModule,
                                          example_data)
TASK = TaskSpec(name={name!r}, description="a fake task for the registry tests",
                module=ClassificationModule, datamodule=ClassificationDataModule,
                example_data=example_data)
"""


def make_distribution(site: Path, dist: str, tasks: dict[str, str], modules: dict[str, str],
                      version: str = "1.0") -> None:
    """Write `<dist>-<version>.dist-info` declaring `tasks` (name -> "module:object") in the
    bertzoo.tasks group, and the module files (module name -> source)."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = [f"[{ENTRY_POINT_GROUP}]"] + [f"{name} = {target}" for name, target in tasks.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    """An empty folder on sys.path where the fake distributions live."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))  # also invalidates importlib's caches
    return folder


def test_fake_distributions_are_discovered_loaded_and_counted(site):
    make_distribution(site, "fake-tasks", {"fake_a": "fake_a_mod:TASK",
                                           "fake_b": "fake_b_mod:TASK"},
                      {"fake_a_mod": GOOD_MODULE.format(name="fake_a"),
                       "fake_b_mod": GOOD_MODULE.format(name="fake_b")}, version="2.5")
    tasks = TaskRegistry()
    assert set(tasks.names()) == INSTALLED | {"fake_a", "fake_b"}
    listed = {t.name: t for t in tasks.list()}
    assert len(listed) == len(INSTALLED) + 2
    for name in ("fake_a", "fake_b"):
        assert listed[name].status == "ok"
        assert (listed[name].distribution, listed[name].version) == ("fake-tasks", "2.5")
        assert tasks.get(name).name == name
    assert listed["classification"].distribution == "bertzoo"


def test_loading_twice_adds_nothing(site, tmp_path, monkeypatch):
    make_distribution(site, "fake-tasks", {"fake_a": "fake_a_mod:TASK"},
                      {"fake_a_mod": GOOD_MODULE.format(name="fake_a")})
    # The same distribution reachable through a second sys.path entry.
    second = tmp_path / "second-site"
    make_distribution(second, "fake-tasks", {"fake_a": "fake_a_mod:TASK"}, {})
    monkeypatch.syspath_prepend(str(second))
    tasks = TaskRegistry()
    first = tasks.list()
    again = tasks.list()
    assert [t.name for t in first] == [t.name for t in again]
    assert len(first) == len(INSTALLED) + 1
    assert all(a is b for a, b in zip(first, again))  # loaded once, not re-imported
    spec = tasks.get("fake_a")
    tasks.register(spec)  # registering the very same spec again is a no-op
    assert len(tasks.list()) == len(INSTALLED) + 1
    tasks.reset()
    assert len(tasks.list()) == len(INSTALLED) + 1


def test_broken_plugin_is_reported_and_skipped(site):
    make_distribution(site, "broken-import", {"broken": "broken_mod:TASK"},
                      {"broken_mod": "import a_module_that_does_not_exist\n"})
    make_distribution(site, "not-a-spec", {"wrong_type": "wrong_mod:TASK"},
                      {"wrong_mod": "TASK = {'name': 'wrong_type'}\n"})
    make_distribution(site, "renamed", {"declared": "renamed_mod:TASK"},
                      {"renamed_mod": GOOD_MODULE.format(name="something_else")})
    make_distribution(site, "no-object", {"missing": "good_mod:NOT_THERE"},
                      {"good_mod": GOOD_MODULE.format(name="missing")})
    make_distribution(site, "fine", {"fine": "fine_mod:TASK"},
                      {"fine_mod": GOOD_MODULE.format(name="fine")})
    tasks = TaskRegistry()
    listed = {t.name: t for t in tasks.list()}
    assert listed["broken"].status.startswith("broken: ModuleNotFoundError")
    assert "a_module_that_does_not_exist" in listed["broken"].error
    assert "wrong_mod:TASK is a dict, expected a bertzoo.tasks.TaskSpec" \
        in listed["wrong_type"].error
    assert "spec name 'something_else' differs from its entry point name 'declared'" \
        in listed["declared"].error
    assert "AttributeError" in listed["missing"].error
    # ... and the others load regardless.
    assert listed["fine"].status == "ok"
    assert all(listed[name].status == "ok" for name in BUILT_IN)
    with pytest.raises(TaskError, match=r"task 'broken' from broken-import cannot be used: "
                                        r"ModuleNotFoundError"):
        tasks.get("broken")


def test_duplicate_name_is_an_error_naming_both_distributions(site):
    make_distribution(site, "first-dist", {"twin": "twin_one:TASK"},
                      {"twin_one": GOOD_MODULE.format(name="twin")})
    make_distribution(site, "second-dist", {"twin": "twin_two:TASK"},
                      {"twin_two": GOOD_MODULE.format(name="twin")})
    tasks = TaskRegistry()
    with pytest.raises(TaskError) as caught:
        tasks.get("twin")
    message = str(caught.value)
    assert "duplicate task name 'twin'" in message
    assert "first-dist (twin_one:TASK)" in message and "second-dist (twin_two:TASK)" in message
    twins = [t for t in tasks.list() if t.name == "twin"]
    assert sorted(t.distribution for t in twins) == ["first-dist", "second-dist"]
    assert all(t.status.startswith("broken: duplicate task name") for t in twins)
    assert tasks.get("classification").name == "classification"  # the others still work


def test_duplicate_of_a_built_in_name(site):
    make_distribution(site, "squatter", {"classification": "squat:TASK"},
                      {"squat": GOOD_MODULE.format(name="classification")})
    with pytest.raises(TaskError, match=r"^duplicate task name 'classification': registered "
                                        r"by bertzoo \(bertzoo.tasks.classification:TASK\) and "
                                        r"squatter \(squat:TASK\); uninstall one of them$"):
        TaskRegistry().get("classification")


def test_unknown_task_lists_known_ones_and_the_closest():
    with pytest.raises(TaskError) as caught:
        TaskRegistry().get("clasification")
    message = str(caught.value)
    assert "unknown task 'clasification' (did you mean 'classification'?); known tasks: " \
        in message
    for name in BUILT_IN:
        assert name in message


def test_register_in_process(site):
    from bertzoo.tasks.classification import TASK
    from bertzoo.tasks.registry import TaskSpec
    tasks = TaskRegistry()
    spec = TaskSpec(name="in_notebook", description="registered from Python",
                    module=TASK.module, datamodule=TASK.datamodule,
                    example_data=TASK.example_data)
    tasks.register(spec)
    assert tasks.get("in_notebook") is spec
    assert {t.name: t.distribution for t in tasks.list()}["in_notebook"] == "<in-process>"
    clash = TaskSpec(name="classification", description="a clash", module=TASK.module,
                     datamodule=TASK.datamodule, example_data=TASK.example_data)
    with pytest.raises(TaskError, match="duplicate task name 'classification'"):
        tasks.register(clash)
    assert tasks.get("classification") is TASK  # the registered task is unharmed
    with pytest.raises(TypeError, match="module must be a TaskModule subclass"):
        tasks.register(TaskSpec(name="bad", description="x", module=dict,
                                datamodule=TASK.datamodule, example_data=TASK.example_data))
    with pytest.raises(TypeError, match="description must be one non-empty line"):
        tasks.register(TaskSpec(name="bad", description="two\nlines", module=TASK.module,
                                datamodule=TASK.datamodule, example_data=TASK.example_data))


def test_entry_point_may_name_a_function_returning_the_spec(site):
    make_distribution(site, "factory", {"made": "factory_mod:make_task"},
                      {"factory_mod": GOOD_MODULE.format(name="made").replace(
                          "TASK = TaskSpec(", "def make_task():\n    return TaskSpec(")})
    assert TaskRegistry().get("made").name == "made"


def test_bertzoo_tasks_command_shows_every_plugin(site, monkeypatch, capsys):
    make_distribution(site, "broken-import", {"broken": "broken_mod:TASK"},
                      {"broken_mod": "raise RuntimeError('plugin bug')\n"})
    monkeypatch.setattr(registry, "REGISTRY", TaskRegistry())
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    header, rule, *rows = out.splitlines()
    assert header.split() == ["name", "description", "distribution", "version", "status"]
    by_name = {row.split()[0]: row for row in rows}
    assert "broken: RuntimeError: plugin bug" in by_name["broken"]
    assert "broken-import" in by_name["broken"]
    assert by_name["classification"].rstrip().endswith("ok")
    # The example plugin is installed (make install) and listed with its distribution.
    assert "bertzoo-multiple-choice" in by_name["multiple_choice"]


def test_bertzoo_tasks_exits_nonzero_on_duplicates(site, monkeypatch, capsys):
    for dist in ("one", "two"):
        make_distribution(site, dist, {"twin": f"twin_{dist}:TASK"},
                          {f"twin_{dist}": GOOD_MODULE.format(name="twin")})
    monkeypatch.setattr(registry, "REGISTRY", TaskRegistry())
    assert main(["tasks"]) == 1
    assert capsys.readouterr().out.count("duplicate task name 'twin'") == 2


def test_cli_with_unknown_or_broken_task(site, monkeypatch, capsys):
    make_distribution(site, "broken-import", {"broken": "broken_mod:TASK"},
                      {"broken_mod": "import a_module_that_does_not_exist\n"})
    monkeypatch.setattr(registry, "REGISTRY", TaskRegistry())
    assert main(["fit", "--task", "clasification"]) == 1
    assert "(did you mean 'classification'?)" in capsys.readouterr().err
    assert main(["fit", "--task", "broken"]) == 1
    err = capsys.readouterr().err
    assert "task 'broken' from broken-import cannot be used" in err
    assert "No module named 'a_module_that_does_not_exist'" in err


def test_example_data_must_accept_like(site):
    make_distribution(site, "old-style", {"old_style": "old_style_mod:TASK"},
                      {"old_style_mod": GOOD_MODULE.format(name="old_style") + textwrap.dedent("""
                          def rows_only(folder):
                              return example_data(folder)
                          TASK = TaskSpec(name="old_style", description="no like=",
                                          module=ClassificationModule,
                                          datamodule=ClassificationDataModule,
                                          example_data=rows_only)
                          """)})
    listed = {t.name: t for t in TaskRegistry().list()}
    assert listed["old_style"].error == ("TypeError: example_data must accept "
                                         "(folder, like=None)")


def test_datamodule_must_be_a_task_data_module():
    import lightning as L

    from bertzoo.tasks import TaskSpec
    from bertzoo.tasks.classification import TASK

    class PlainData(L.LightningDataModule):
        pass

    spec = TaskSpec(name="plain", description="x", module=TASK.module, datamodule=PlainData,
                    example_data=TASK.example_data)
    with pytest.raises(TypeError, match=r"datamodule must be a TaskDataModule subclass, got "
                                        r"<class '.*PlainData'>"):
        spec.validate()


def test_every_data_module_shares_the_bert_data_module_base():
    from bertzoo.pretraining import PretrainingDataModule
    from bertzoo.tasks import TaskDataModule
    from bertzoo.training.data import BertDataModule
    assert issubclass(PretrainingDataModule, BertDataModule)
    assert issubclass(TaskDataModule, BertDataModule)
    for task in TaskRegistry().list():
        if task.spec is not None:
            assert set(task.spec.datamodule.model_links) >= {"vocab_size"}, task.name


def _bertzoo_imports(folder: Path) -> dict[str, set[str]]:
    """file -> the bertzoo modules its import statements name (anywhere in the file)."""
    import ast
    found = {}
    for path in sorted(folder.rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
        found[path.name] = {n for n in names if n == "bertzoo" or n.startswith("bertzoo.")}
    return found


def test_the_example_plugin_reaches_bertzoo_only_through_bertzoo_tasks():
    plugin = Path(__file__).resolve().parents[1] / "plugins" / "bertzoo-multiple-choice"
    package = _bertzoo_imports(plugin / "bertzoo_multiple_choice")
    assert package and all(names <= {"bertzoo.tasks"} for names in package.values()), package
    tests = _bertzoo_imports(plugin / "tests")
    # its tests: the test kit, and `bertzoo.export` for the export they compare with
    # Hugging Face's BertForMultipleChoice
    assert all(names <= {"bertzoo.tasks", "bertzoo.testing", "bertzoo.export"}
               for names in tests.values()), tests
    import bertzoo.tasks
    for name in bertzoo.tasks.__all__:
        assert hasattr(bertzoo.tasks, name), name
