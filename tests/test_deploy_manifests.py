"""deploy/k8s and deploy/compose: structure, and every `monitor` invocation checked against the real CLI.

There is no cluster and no Docker engine here, so the manifests are checked
structurally and against the code they start:

- every YAML document parses; Kubernetes objects have apiVersion, kind and
  metadata.name, containers an image and valid ports; the compose file has the
  expected services; the kustomization lists every manifest;
- every `monitor ...` invocation (a container whose command is `monitor`, a
  compose service built from deploy/compose/Dockerfile, whose ENTRYPOINT is
  `monitor`) names a real subcommand of ``monitor.cli.main`` and only options
  that subcommand (or, before it, the group) has; click's own parser then
  parses the arguments as the command would;
- every MONITOR_* variable names a real setting (``monitor.config.Settings``);
- each invocation is then run through the real CLI up to the point where it
  would start (``monitor.cli._run`` replaced by a recorder), with the
  manifest's environment and mounted config file, and the ports it would
  listen on are compared with container ports, probes, Services, compose
  ports and healthchecks: a probe or Service on a port bound to 127.0.0.1 is
  reported, since kubelet and other containers reach the pod IP.

`checks` and `dashboard` need commands that do not exist yet (`monitor checks`,
`monitor dashboard`). They are marked (annotation ``llm-monitor/requires`` in
Kubernetes, profile ``future`` in compose); for them, and only while the
command is missing, the flag check is skipped. The marked set must be exactly
those two, so the exemption cannot grow unnoticed.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import typing
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import click
import pytest
import yaml
from pydantic import BaseModel

from monitor import cli
from monitor.cli import main
from monitor.config import CONFIG_ENV, Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
COMPOSE = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE / "docker-compose.yml"
DOCKERFILE = COMPOSE / "Dockerfile"
KUSTOMIZATION = K8S / "kustomization.yaml"

MONITOR_IMAGE = "llm-monitor"
FUTURE_ANNOTATION = "llm-monitor/requires"
FUTURE_PROFILE = "future"
FUTURE_COMMANDS: set[str] = set()  # `monitor dashboard` exists now; the exemption is empty
# The only objects allowed to carry the exemption.
FUTURE_K8S: set[tuple[str, str]] = set()
FUTURE_COMPOSE: set[str] = set()
COMPOSE_SERVICES = {"kafka", "clickhouse", "ingest", "vllm", "sidecar", "checks", "dashboard"}

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


# ---------------------------------------------------------------------------- loading


def load_docs(path: Path) -> list[dict]:
    with path.open() as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    for d in docs:
        assert isinstance(d, dict), f"{path}: a YAML document is not a mapping"
    return docs


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.y*ml") if p != KUSTOMIZATION)


def k8s_objects() -> list[tuple[str, dict]]:
    return [(p.name, d) for p in k8s_files() for d in load_docs(p)]


def compose_doc() -> dict:
    docs = load_docs(COMPOSE_FILE)
    assert len(docs) == 1, "docker-compose.yml must be one YAML document"
    return docs[0]


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's variable interpolation with an empty (or given) environment: defaults apply."""
    env = env or {}

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, default = m.group(2), m.group(3)
        val = env.get(name)
        if op in (":-", ":?"):
            return val if val else (default if op == ":-" else "")
        if op in ("-", "?"):
            return val if val is not None else (default if op == "-" else "")
        return val or ""

    return _VAR.sub(sub, value)


# ---------------------------------------------------------------------------- the CLI's own tree


def _option_map(command: click.Command) -> dict[str, click.Option]:
    out: dict[str, click.Option] = {}
    for p in command.params:
        if isinstance(p, click.Option):
            for name in [*p.opts, *p.secondary_opts]:
                out[name] = p
    return out


def _takes_value(opt: click.Option) -> bool:
    return not opt.is_flag and not opt.count and opt.nargs != 0


def _tokens(option_map: dict[str, click.Option], args: list[str], where: str, problems: list[str],
            group_opts: dict[str, click.Option] | None = None) -> None:
    """Check option names in `args` (everything after the command name) against `option_map`."""
    i = 0
    while i < len(args):
        tok = args[i]
        if tok == "--":
            break
        if tok.startswith("-") and len(tok) > 1 and not re.fullmatch(r"-\d+(\.\d+)?", tok):
            name, has_eq, _ = tok.partition("=")
            opt = option_map.get(name)
            if opt is None:
                if group_opts and name in group_opts:
                    problems.append(f"{where}: {name} is an option of `monitor` itself and must come before "
                                    f"the subcommand (click rejects it after)")
                else:
                    known = ", ".join(sorted(o for o in option_map if o.startswith("--")))
                    problems.append(f"{where}: no such option {name} (known: {known})")
                i += 1
                continue
            if _takes_value(opt) and not has_eq:
                if i + 1 >= len(args):
                    problems.append(f"{where}: {name} needs a value")
                i += 1
        else:
            problems.append(f"{where}: unexpected argument {tok!r}")
        i += 1


def split_invocation(argv: list[str]) -> tuple[list[str], str | None, list[str]]:
    """`monitor <group options> <subcommand> <options>` -> (group args, subcommand, subcommand args)."""
    group_opts = _option_map(main)
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        name, has_eq, _ = argv[i].partition("=")
        opt = group_opts.get(name)
        i += 2 if (opt is not None and _takes_value(opt) and not has_eq) else 1
    if i >= len(argv):
        return argv, None, []
    return argv[:i], argv[i], argv[i + 1:]


def _leading_options(group: click.Group, args: list[str]) -> int:
    """How many of `args` are `group`'s own options (with their values) before its subcommand."""
    opts = _option_map(group)
    i = 0
    while i < len(args) and args[i].startswith("-"):
        name, has_eq, _ = args[i].partition("=")
        opt = opts.get(name)
        i += 2 if (opt is not None and _takes_value(opt) and not has_eq) else 1
    return i


def check_invocation(argv: list[str], where: str = "monitor", future: bool = False) -> list[str]:
    """Problems with `monitor <argv>`, found with click's real command tree; [] when it parses.

    ``future``: the object is marked as needing a command that does not exist yet. Then the
    subcommand must be one of FUTURE_COMMANDS, and its flags are checked only once it exists.
    """
    problems: list[str] = []
    where = f"{where}: `monitor {' '.join(argv)}`"
    group: click.Group = main
    names = ["monitor"]
    outer_opts: dict[str, click.Option] = {}
    args = list(argv)
    while True:  # descend through groups (`monitor baseline pin ...`)
        n = _leading_options(group, args)
        _tokens(_option_map(group), args[:n], f"{where} [{' '.join(names)}]", problems, outer_opts)
        outer_opts = {**outer_opts, **_option_map(group)}
        if n >= len(args):
            return problems + [f"{where}: no subcommand"]
        sub, args = args[n], args[n + 1:]
        if future and group is main:
            if sub not in FUTURE_COMMANDS:
                return problems + [f"{where}: marked as needing a future command, but `{sub}` is not one of "
                                   f"{sorted(FUTURE_COMMANDS)}"]
            if sub not in main.commands:
                return problems  # the command does not exist yet: nothing to check the flags against
            warnings.warn(f"{where}: `monitor {sub}` exists now; drop the future marker (annotation / profile)",
                          stacklevel=2)
        command = group.commands.get(sub)
        if command is None:
            return problems + [f"{where}: no subcommand `{sub}` of `{' '.join(names)}` "
                               f"(have: {', '.join(sorted(group.commands))})"]
        names.append(sub)
        if not isinstance(command, click.Group):
            break
        group = command
    _tokens(_option_map(command), args, f"{where} [{' '.join(names[1:])}]", problems, outer_opts)
    if problems:
        return problems
    # Names are right; now click's parser (types, arity) exactly as the command would run, minus the run.
    try:
        parent, cmd, info, rest = None, main, "monitor", list(argv)
        for name in names[1:]:
            n = _leading_options(cmd, rest)
            parent = cmd.make_context(info, [*rest[:n], name], parent=parent)
            cmd, info, rest = cmd.commands[name], name, rest[n + 1:]
        cmd.make_context(info, rest, parent=parent)
    except click.ClickException as exc:
        problems.append(f"{where}: click rejects it: {exc.format_message()}")
    return problems


def check_env_name(name: str) -> str | None:
    """None when `name` is not a MONITOR_* variable or maps to a real setting; else the problem."""
    if not name.startswith("MONITOR_"):
        return None
    if name == CONFIG_ENV:
        return None
    parts = name[len("MONITOR_"):].lower().split("__")
    top = Settings.model_fields.get(parts[0])
    if top is None:
        return f"{name}: no setting `{parts[0]}` (sections: {', '.join(sorted(Settings.model_fields))})"
    annotation = top.annotation
    if len(parts) == 1:
        return None
    if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return f"{name}: `{parts[0]}` is not a section"
    key = annotation.model_fields.get(parts[1])
    if key is None:
        return (f"{name}: section `{parts[0]}` has no key `{parts[1]}` "
                f"(keys: {', '.join(sorted(annotation.model_fields))})")
    if len(parts) > 2 and typing.get_origin(key.annotation) is not dict:
        return f"{name}: `{parts[0]}.{parts[1]}` has no sub-keys"
    return None


# ---------------------------------------------------------------------------- Kubernetes extraction


def pod_template(obj: dict) -> dict | None:
    kind = obj.get("kind")
    if kind == "Pod":
        return obj
    if kind == "CronJob":
        return obj.get("spec", {}).get("jobTemplate", {}).get("spec", {}).get("template")
    if kind in WORKLOAD_KINDS:
        return obj.get("spec", {}).get("template")
    return None


def all_containers(pod_spec: dict) -> list[dict]:
    return list(pod_spec.get("initContainers") or []) + list(pod_spec.get("containers") or [])


def image_name(image: str) -> str:
    """`registry:5000/org/llm-monitor:0.1.0@sha256:...` -> `llm-monitor`."""
    image = image.split("@", 1)[0]
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def k8s_monitor_argv(container: dict) -> list[str] | None:
    """`monitor` arguments of a container, or None when it does not run the monitor."""
    command = list(container.get("command") or [])
    args = [str(a) for a in container.get("args") or []]
    if command:
        if PurePosixPath(str(command[0])).name != "monitor":
            return None
        return [str(c) for c in command[1:]] + args
    if image_name(str(container.get("image", ""))) == MONITOR_IMAGE:
        return args  # the image's ENTRYPOINT is monitor
    return None


def is_future(obj: dict) -> bool:
    return FUTURE_ANNOTATION in ((obj.get("metadata") or {}).get("annotations") or {})


def _secret_data(objects: list[dict]) -> dict[tuple[str, str], dict[str, str]]:
    out: dict[tuple[str, str], dict[str, str]] = {}
    for o in objects:
        name = (o.get("metadata") or {}).get("name")
        if o.get("kind") == "Secret":
            data = {k: base64.b64decode(v).decode() for k, v in (o.get("data") or {}).items()}
            data.update({k: str(v) for k, v in (o.get("stringData") or {}).items()})
            out[("Secret", name)] = data
        elif o.get("kind") == "ConfigMap":
            out[("ConfigMap", name)] = {k: str(v) for k, v in (o.get("data") or {}).items()}
    return out


@dataclass
class Invocation:
    where: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # container path -> content (mounted config)
    mounts: list[str] = field(default_factory=list)  # mount paths (volumes) in the container
    future: bool = False
    problems: list[str] = field(default_factory=list)  # found while extracting (unresolved refs, ...)
    app: object = None  # what the command would run (set by run_until_start)

    @property
    def subcommand(self) -> str | None:
        return split_invocation(self.argv)[1]


def k8s_container_invocation(where: str, container: dict, pod_spec: dict, objects: list[dict],
                             future: bool) -> Invocation | None:
    argv = k8s_monitor_argv(container)
    if argv is None:
        return None
    data = _secret_data(objects)
    inv = Invocation(where=where, argv=argv, future=future)
    for e in container.get("env") or []:
        name = e.get("name")
        if "value" in e:
            inv.env[name] = str(e["value"])
            continue
        ref = (e.get("valueFrom") or {})
        for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
            r = ref.get(key)
            if r is None:
                continue
            values = data.get((kind, r.get("name")))
            if values is None or r.get("key") not in values:
                if not r.get("optional"):
                    inv.problems.append(f"{where}: env {name} refers to {kind} {r.get('name')!r} key "
                                        f"{r.get('key')!r}, which no manifest here defines")
            else:
                inv.env[name] = values[r["key"]]
    for src in container.get("envFrom") or []:
        for kind, key in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
            r = src.get(key)
            if r is not None:
                values = data.get((kind, r.get("name")))
                if values is None and not r.get("optional"):
                    inv.problems.append(f"{where}: envFrom {kind} {r.get('name')!r} is not defined here")
                for k, v in (values or {}).items():
                    inv.env[(src.get("prefix") or "") + k] = v
    volumes = {v.get("name"): v for v in pod_spec.get("volumes") or []}
    for m in container.get("volumeMounts") or []:
        inv.mounts.append(m["mountPath"])
        vol = volumes.get(m.get("name")) or {}
        cm = vol.get("configMap")
        if cm is not None:
            values = data.get(("ConfigMap", cm.get("name")))
            if values is None:
                inv.problems.append(f"{where}: volume {m.get('name')!r} mounts ConfigMap {cm.get('name')!r}, "
                                    "which no manifest here defines")
                continue
            items = cm.get("items") or [{"key": k, "path": k} for k in values]
            for item in items:
                if "subPath" in m:
                    if m["subPath"] == item["path"]:
                        inv.files[m["mountPath"]] = values.get(item["key"], "")
                else:
                    inv.files[str(PurePosixPath(m["mountPath"]) / item["path"])] = values.get(item["key"], "")
    # Kubernetes expands $(VAR) in args from the container's env.
    inv.argv = [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: inv.env.get(m.group(1), m.group(0)), a)
                for a in inv.argv]
    return inv


def k8s_invocations(objects: list[tuple[str, dict]]) -> list[tuple[Invocation, dict, dict, dict]]:
    """(invocation, container, pod spec, owning object) for every monitor container."""
    plain = [o for _, o in objects]
    out = []
    for fname, obj in objects:
        tmpl = pod_template(obj)
        if tmpl is None:
            continue
        spec = tmpl.get("spec") or {}
        for c in all_containers(spec):
            where = f"{fname}: {obj['kind']}/{obj['metadata']['name']} container {c.get('name')}"
            inv = k8s_container_invocation(where, c, spec, plain, is_future(obj) or is_future(tmpl))
            if inv is not None:
                out.append((inv, c, spec, obj))
    return out


def k8s_problems(objects: list[tuple[str, dict]]) -> list[str]:
    """Flag, environment and reference problems of every monitor container in `objects`."""
    problems: list[str] = []
    for inv, c, _spec, _obj in k8s_invocations(objects):
        problems += inv.problems
        problems += check_invocation(inv.argv, inv.where, inv.future)
    for fname, obj in objects:
        tmpl = pod_template(obj)
        for c in all_containers((tmpl or {}).get("spec") or {}):
            for e in c.get("env") or []:
                p = check_env_name(str(e.get("name")))
                if p:
                    problems.append(f"{fname}: container {c.get('name')}: {p}")
        if obj.get("kind") in ("ConfigMap", "Secret"):
            for key in [*(obj.get("data") or {}), *(obj.get("stringData") or {})]:
                p = check_env_name(key)
                if p:
                    problems.append(f"{fname}: {obj['kind']}/{obj['metadata']['name']}: {p}")
    return problems


# ---------------------------------------------------------------------------- compose extraction


def dockerfile_entrypoint(path: Path = DOCKERFILE) -> list[str] | None:
    entry = None
    for line in path.read_text().splitlines():
        m = re.match(r"^\s*ENTRYPOINT\s+(.*)$", line, re.I)
        if m:
            raw = m.group(1).strip()
            entry = json.loads(raw) if raw.startswith("[") else ["/bin/sh", "-c", raw]
    return entry


def compose_monitor_argv(name: str, svc: dict) -> list[str] | None:
    """`monitor` arguments of a compose service, or None when it does not run the monitor image."""
    build = svc.get("build")
    uses_image = False
    if build is not None:
        ctx = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        uses_image = (COMPOSE / ctx / dockerfile).resolve() == DOCKERFILE.resolve()
    elif image_name(str(svc.get("image", ""))) == MONITOR_IMAGE:
        uses_image = True
    entry = svc.get("entrypoint")
    if entry is not None:
        entry = shlex.split(entry) if isinstance(entry, str) else [str(e) for e in entry]
        if not entry or PurePosixPath(entry[0]).name != "monitor":
            return None
        prefix = entry[1:]
    elif uses_image:
        prefix = []
    else:
        return None
    command = svc.get("command") or []
    command = shlex.split(command) if isinstance(command, str) else [str(c) for c in command]
    return prefix + [interpolate(c) for c in command]


def compose_env(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {str(k): interpolate("" if v is None else str(v)) for k, v in env.items()}


def compose_mounts(svc: dict) -> list[tuple[str, str, str]]:
    """(type, source, target) of every volume of a service."""
    out = []
    for v in svc.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            if len(parts) == 1:
                out.append(("volume", "", parts[0]))
            else:
                src = parts[0]
                kind = "bind" if src.startswith((".", "/", "~")) else "volume"
                out.append((kind, src, parts[1]))
        else:
            out.append((v.get("type", "volume"), str(v.get("source", "")), str(v["target"])))
    return out


def compose_container_ports(svc: dict) -> list[tuple[int, str]]:
    """(container port, published host IP or '') of `ports` and `expose`."""
    out = []
    for p in svc.get("ports") or []:
        if isinstance(p, dict):
            out.append((int(p["target"]), str(p.get("host_ip", ""))))
            continue
        p = str(p).split("/", 1)[0]
        parts = p.rsplit(":", 2)
        ip = parts[0] if len(parts) == 3 else ""
        out.append((int(parts[-1]), ip))
    for p in svc.get("expose") or []:
        out.append((int(str(p).split("/", 1)[0]), ""))
    return out


def compose_invocations(doc: dict) -> list[tuple[str, Invocation]]:
    out = []
    for name, svc in (doc.get("services") or {}).items():
        argv = compose_monitor_argv(name, svc)
        if argv is None:
            continue
        inv = Invocation(where=f"docker-compose.yml: service {name}", argv=argv, env=compose_env(svc),
                         future=FUTURE_PROFILE in (svc.get("profiles") or []))
        for kind, src, target in compose_mounts(svc):
            inv.mounts.append(target)
            if kind == "bind" and (COMPOSE / src).is_file():
                inv.files[target] = (COMPOSE / src).read_text()
        out.append((name, inv))
    return out


def compose_problems(doc: dict) -> list[str]:
    problems: list[str] = []
    for _name, inv in compose_invocations(doc):
        problems += check_invocation(inv.argv, inv.where, inv.future)
    for name, svc in (doc.get("services") or {}).items():
        for key in compose_env(svc):
            p = check_env_name(key)
            if p:
                problems.append(f"docker-compose.yml: service {name}: {p}")
    return problems


# ---------------------------------------------------------------------------- effective settings


@dataclass
class Listener:
    component: str
    host: str

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK


def run_until_start(inv: Invocation, tmp_path: Path) -> tuple[str, Settings]:
    """Run `monitor <argv>` through the real CLI with the manifest's env and mounted files, stopping
    where it would start serving; returns (subcommand, the settings it would run with)."""
    argv = list(inv.argv)
    group_args, sub, rest = split_invocation(argv)
    for i, a in enumerate(group_args):
        if a == "--config" or a.startswith("--config="):
            path = a.partition("=")[2] if "=" in a else group_args[i + 1]
            assert path in inv.files, f"{inv.where}: --config {path} is not a mounted file " \
                                      f"(mounted: {sorted(inv.files) or 'none'})"
            local = tmp_path / f"config-{len(list(tmp_path.iterdir()))}.yaml"
            local.write_text(inv.files[path])
            if "=" in a:
                group_args[i] = f"--config={local}"
            else:
                group_args[i + 1] = str(local)
    seen: dict[str, object] = {}

    def record(factory, settings):
        seen["factory"], seen["settings"] = factory, settings

    with pytest.MonkeyPatch.context() as mp:
        for k in list(os.environ):
            if k.startswith("MONITOR_"):
                mp.delenv(k)
        for k, v in inv.env.items():
            mp.setenv(k, v)
        mp.setattr(cli, "_run", record)
        mp.setattr(cli, "_setup_logging", lambda level: None)
        try:
            main.main(args=[*group_args, sub, *rest], prog_name="monitor", standalone_mode=False)
        except click.ClickException as exc:
            pytest.fail(f"{inv.where}: the monitor would refuse to start: {exc.format_message()}")
        except Exception as exc:  # e.g. pydantic-settings failing to parse an environment value
            pytest.fail(f"{inv.where}: the monitor would fail at start: {type(exc).__name__}: {exc} "
                        f"(env: {sorted(k for k in inv.env if k.startswith('MONITOR_'))})")
    assert "settings" in seen, f"{inv.where}: `monitor {sub}` did not reach its start"
    inv.app = seen["factory"]
    return sub, seen["settings"]


def listeners(sub: str, s: Settings, app: object = None) -> dict[int, Listener]:
    """What `monitor <sub>` with settings `s` listens on, from the settings and the app's defaults
    (``app``: what the command handed to ``_run``, e.g. ``monitor.runtime.apps.Sidecar``)."""
    out: dict[int, Listener] = {}
    default = getattr(app, "default_metrics_port", None)
    assert default is not None or s.telemetry.metrics_port is not None, \
        f"`monitor {sub}`: cannot tell its metrics port (app {app!r})"
    port = s.telemetry.metrics_port if s.telemetry.metrics_port is not None else default
    out[port] = Listener("self-metrics", s.telemetry.metrics_host)
    if sub == "up" and getattr(s, "checks", None) is not None and hasattr(s.checks, "admin_port"):
        out[s.checks.admin_port] = Listener("admin endpoint", s.checks.admin_host)
    if sub == "dashboard" or (sub == "up" and getattr(getattr(s, "dashboard", None), "enabled", False)):
        out[s.dashboard.port] = Listener("dashboards", s.dashboard.host)
    if sub in ("up", "sidecar"):
        if s.receiver.grpc_enabled:
            out[s.receiver.grpc_port] = Listener("OTLP/gRPC receiver", s.receiver.host)
        if s.receiver.http_enabled:
            out[s.receiver.http_port] = Listener("OTLP/HTTP receiver", s.receiver.host)
        if s.proxy.upstream:
            out[s.proxy.port] = Listener("capture proxy", s.proxy.host)
    return out


def future_ports(inv: Invocation) -> set[int]:
    """A future command's ports: only what its own --*port flags say."""
    _g, _sub, rest = split_invocation(inv.argv)
    return {int(rest[i + 1]) for i, a in enumerate(rest[:-1]) if a.endswith("port") and rest[i + 1].isdigit()}


def under(path: str, mounts: list[str]) -> str | None:
    p = PurePosixPath(path)
    for m in mounts:
        if p == PurePosixPath(m) or PurePosixPath(m) in p.parents:
            return m
    return None


# ============================================================================ tests: files


def test_files_exist():
    for p in (COMPOSE_FILE, DOCKERFILE, KUSTOMIZATION, K8S / "README.md", COMPOSE / "README.md"):
        assert p.is_file(), p
    assert {p.name for p in k8s_files()} >= {"sidecar-pod.yaml", "ingest.yaml", "checks.yaml", "dashboard.yaml"}


@pytest.mark.parametrize("path", sorted([*K8S.glob("*.y*ml"), *COMPOSE.glob("*.y*ml")]), ids=lambda p: p.name)
def test_every_yaml_document_parses(path):
    assert load_docs(path), f"{path} has no documents"


# ============================================================================ tests: Kubernetes structure


def test_k8s_objects_are_well_formed():
    problems = []
    seen = set()
    for fname, obj in k8s_objects():
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        if not obj.get("apiVersion") or not obj.get("kind") or not name:
            problems.append(f"{fname}: object without apiVersion/kind/metadata.name: {obj.get('kind')} {name}")
            continue
        if not DNS1123.match(name) or len(name) > 253:
            problems.append(f"{fname}: {obj['kind']} name {name!r} is not a DNS-1123 name")
        if (obj["kind"], name) in seen:
            problems.append(f"{fname}: {obj['kind']}/{name} defined twice")
        seen.add((obj["kind"], name))
        tmpl = pod_template(obj)
        if obj["kind"] in WORKLOAD_KINDS and obj["kind"] != "Pod":
            selector = (obj["spec"].get("selector") or {}).get("matchLabels") or {}
            labels = ((tmpl or {}).get("metadata") or {}).get("labels") or {}
            if obj["kind"] != "CronJob" and obj["kind"] != "Job":
                if not selector or any(labels.get(k) != v for k, v in selector.items()):
                    problems.append(f"{fname}: {obj['kind']}/{name}: selector {selector} does not match "
                                    f"template labels {labels}")
        if tmpl is not None:
            spec = tmpl.get("spec") or {}
            containers = spec.get("containers") or []
            if not containers:
                problems.append(f"{fname}: {obj['kind']}/{name} has no containers")
            volumes = {v.get("name") for v in spec.get("volumes") or []}
            volumes |= {((t.get("metadata") or {}).get("name")) for t in obj["spec"].get("volumeClaimTemplates") or []}
            for c in all_containers(spec):
                cw = f"{fname}: {obj['kind']}/{name} container {c.get('name')}"
                if not c.get("name") or not c.get("image"):
                    problems.append(f"{cw}: needs name and image")
                names = set()
                for p in c.get("ports") or []:
                    port = p.get("containerPort")
                    if not isinstance(port, int) or not 1 <= port <= 65535:
                        problems.append(f"{cw}: invalid containerPort {port!r}")
                    pname = p.get("name")
                    if pname is not None:
                        if len(pname) > 15 or not PORT_NAME.match(pname) or pname in names:
                            problems.append(f"{cw}: invalid or duplicate port name {pname!r}")
                        names.add(pname)
                for probe_kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                    probe = c.get(probe_kind)
                    if probe is None:
                        continue
                    target = probe.get("httpGet") or probe.get("tcpSocket") or probe.get("grpc")
                    if target is None and "exec" not in probe:
                        problems.append(f"{cw}: {probe_kind} without a handler")
                    if target is not None and _resolve_port(c, target.get("port")) is None:
                        problems.append(f"{cw}: {probe_kind} port {target.get('port')!r} is not a port of "
                                        "the container")
                for m in c.get("volumeMounts") or []:
                    if m.get("name") not in volumes:
                        problems.append(f"{cw}: volumeMount {m.get('name')!r} has no volume")
        if obj["kind"] == "Service":
            for p in obj["spec"].get("ports") or []:
                port = p.get("port")
                if not isinstance(port, int) or not 1 <= port <= 65535:
                    problems.append(f"{fname}: Service/{name}: invalid port {port!r}")
                tp = p.get("targetPort", port)
                if not (isinstance(tp, int) and 1 <= tp <= 65535) and not (isinstance(tp, str) and PORT_NAME.match(tp)):
                    problems.append(f"{fname}: Service/{name}: invalid targetPort {tp!r}")
    assert not problems, "\n".join(problems)


def _resolve_port(container: dict, port) -> int | None:
    """A probe's or Service's port (number or name) as a number, if the container declares it."""
    declared = {p.get("name"): p.get("containerPort") for p in container.get("ports") or []}
    if isinstance(port, int):
        return port if 1 <= port <= 65535 else None
    if isinstance(port, str) and port.isdigit():
        return int(port)
    return declared.get(port)


def test_kustomization_lists_every_manifest():
    kust = load_docs(KUSTOMIZATION)[0]
    assert kust.get("kind") == "Kustomization"
    assert str(kust.get("apiVersion", "")).startswith("kustomize.config.k8s.io/")
    listed = kust.get("resources") or []
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    assert set(listed) == {p.name for p in k8s_files()}, \
        f"kustomization resources {sorted(listed)} != manifests {sorted(p.name for p in k8s_files())}"
    images = {i.get("name") for i in kust.get("images") or []}
    assert MONITOR_IMAGE in images, "kustomization.yaml should set the monitor image (images:)"


def test_kustomize_builds():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    proc = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and "unknown command" in proc.stderr:
        pytest.skip(f"this kubectl has no kustomize: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    built = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert len(built) == len(k8s_objects())
    assert all(d["metadata"].get("namespace") == "llm-monitor" for d in built if d["kind"] != "Namespace")


# ============================================================================ tests: the monitor invocations


def test_k8s_monitor_invocations_match_the_cli():
    objects = k8s_objects()
    invs = k8s_invocations(objects)
    subs = {inv.subcommand for inv, *_ in invs}
    assert {"sidecar", "ingest", "checks", "dashboard"} <= subs, f"monitor containers found: {subs}"
    problems = k8s_problems(objects)
    assert not problems, "\n".join(problems)


def test_compose_monitor_invocations_match_the_cli():
    doc = compose_doc()
    invs = dict(compose_invocations(doc))
    assert {"sidecar", "ingest", "checks", "dashboard"} <= set(invs), f"monitor services found: {sorted(invs)}"
    assert {n: i.subcommand for n, i in invs.items()} == {"sidecar": "sidecar", "ingest": "ingest",
                                                          "checks": "checks", "dashboard": "dashboard"}
    problems = compose_problems(doc)
    assert not problems, "\n".join(problems)


def test_future_exemption_is_exactly_checks_and_dashboard():
    k8s_marked = {(o["kind"], o["metadata"]["name"]) for _, o in k8s_objects() if is_future(o)}
    assert k8s_marked == FUTURE_K8S
    for inv, _c, _s, obj in k8s_invocations(k8s_objects()):
        marked = (obj["kind"], obj["metadata"]["name"]) in FUTURE_K8S
        assert inv.future == marked, inv.where
        assert (inv.subcommand in FUTURE_COMMANDS) == marked, inv.where
    for kind, name in FUTURE_K8S:
        obj = next(o for _, o in k8s_objects() if (o["kind"], o["metadata"]["name"]) == (kind, name))
        if split_invocation(k8s_monitor_argv(obj["spec"]["template"]["spec"]["containers"][0]))[1] \
                not in main.commands:
            assert obj["spec"].get("replicas") == 0, f"{kind}/{name}: replicas 0 until its command exists"
    services = compose_doc()["services"]
    compose_marked = {n for n, s in services.items() if FUTURE_PROFILE in (s.get("profiles") or [])}
    assert compose_marked == FUTURE_COMPOSE
    for n, s in services.items():
        if s.get("profiles") and n not in FUTURE_COMPOSE:
            pytest.fail(f"service {n} has profiles {s['profiles']}: the default `up` would skip it")


def test_future_services_are_otherwise_checked():
    """The exemption covers flags only: image, ports, env and Service wiring are checked like the rest."""
    for inv, c, _spec, _obj in k8s_invocations(k8s_objects()):
        if not inv.future:
            continue
        assert image_name(c["image"]) == MONITOR_IMAGE, inv.where
        declared = {p["containerPort"] for p in c.get("ports") or []}
        assert declared <= future_ports(inv), f"{inv.where}: ports {declared} not given by its --port flag"
    for name, inv in compose_invocations(compose_doc()):
        if inv.future:
            ports = {p for p, _ip in compose_container_ports(compose_doc()["services"][name])}
            assert ports <= future_ports(inv), f"{inv.where}: ports {ports} not given by its --port flag"


# ---------------------------------------------------------------------------- negative tests: the checker can fail


def test_checker_reports_a_misspelled_flag():
    fake = yaml.safe_load("""
apiVersion: apps/v1
kind: Deployment
metadata: {name: broken}
spec:
  selector: {matchLabels: {app: broken}}
  template:
    metadata: {labels: {app: broken}}
    spec:
      containers:
        - name: monitor
          image: llm-monitor:0.1.0
          command: ["monitor"]
          args: ["sidecar", "--kafak", "kafka:9092", "--upstream", "http://127.0.0.1:8000"]
          env:
            - {name: MONITOR_PROXY__HSOT, value: 0.0.0.0}
""")
    problems = k8s_problems([("fake.yaml", fake)])
    assert any("no such option --kafak" in p for p in problems), problems
    assert any("MONITOR_PROXY__HSOT" in p for p in problems), problems
    assert not any("no such option --upstream" in p for p in problems), problems


def test_checker_reports_other_mistakes():
    assert check_invocation(["sidecar", "--kafka", "k:9092"]) == []
    assert check_invocation(["--config", "/c.yaml", "--log-level", "DEBUG", "ingest", "--kafka", "k:9092"]) == []
    assert any("no subcommand `sidecars`" in p for p in check_invocation(["sidecars"]))
    # A group option after the subcommand: click itself rejects it.
    assert any("must come before" in p for p in check_invocation(["ingest", "--config", "/c.yaml"]))
    # An option of another subcommand.
    assert any("no such option --upstream" in p for p in check_invocation(["ingest", "--upstream", "x"]))
    # Right name, wrong value: click's parser is the judge.
    assert any("click rejects" in p for p in check_invocation(["sidecar", "--metrics-port", "http"]))
    assert any("needs a value" in p for p in check_invocation(["sidecar", "--kafka"]))
    # The future exemption does not cover existing commands or unknown ones.
    assert check_invocation(["checks", "--anything"], future=True) == [] or "checks" in main.commands
    assert check_invocation(["sidecar", "--kafak", "x"], future=True)
    assert check_invocation(["ingest", "--clickhouse", "x"], future=True)
    # Environment names.
    assert check_env_name("MONITOR_KAFKA__BOOTSTRAP_SERVERS") is None
    assert check_env_name("MONITOR_LOG_LEVEL") is None
    assert check_env_name("MONITOR_CONFIG") is None
    assert check_env_name("OTEL_SERVICE_NAME") is None
    assert check_env_name("MONITOR_KAFKA_BOOTSTRAP_SERVERS")  # single underscore
    assert check_env_name("MONITOR_STORE__URLS")
    assert check_env_name("MONITOR_GPUS__PRICE_PER_GPU_HOUR")
    assert check_env_name("MONITOR_REDACTION__CUSTOM__TICKET") is None  # dict-valued setting


def test_compose_checker_reports_a_misspelled_flag():
    fake = {"services": {"ingest": {"build": {"context": "../..", "dockerfile": "deploy/compose/Dockerfile"},
                                    "command": ["ingest", "--clikhouse", "http://x:8123/db"],
                                    "environment": {"MONITOR_STORE__URL": "http://x:8123/db",
                                                    "MONITOR_INGEST__BATCH": "1"}}}}
    problems = compose_problems(fake)
    assert any("--clikhouse" in p for p in problems), problems
    assert any("MONITOR_INGEST__BATCH" in p for p in problems), problems


# ============================================================================ tests: ports, probes, Services


def _k8s_settings(tmp_path, objects: list[tuple[str, dict]]):
    out = []
    for inv, c, spec, obj in k8s_invocations(objects):
        if inv.future and inv.subcommand not in main.commands:
            continue
        sub, settings = run_until_start(inv, tmp_path)
        out.append((inv, c, spec, obj, sub, settings))
    return out


def test_k8s_ports_probes_and_services_match_what_the_monitor_listens_on(tmp_path):
    problems = []
    objects = k8s_objects()
    monitor_containers = {}  # id(container dict) -> listeners; same parsed objects as the Services below
    for inv, c, spec, obj, sub, s in _k8s_settings(tmp_path, objects):
        listen = listeners(sub, s, inv.app)
        monitor_containers[id(c)] = listen
        for p in c.get("ports") or []:
            if p["containerPort"] not in listen:
                problems.append(f"{inv.where}: declares port {p['containerPort']}, but `monitor {sub}` listens "
                                f"on {sorted(listen)}")
        for probe_kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = c.get(probe_kind)
            target = probe and (probe.get("httpGet") or probe.get("tcpSocket") or probe.get("grpc"))
            if not target:
                continue
            port = _resolve_port(c, target.get("port"))
            if port not in listen:
                problems.append(f"{inv.where}: {probe_kind} on port {port}, where nothing listens "
                                f"(`monitor {sub}` listens on {sorted(listen)})")
            elif listen[port].loopback:
                problems.append(f"{inv.where}: {probe_kind} on port {port}, but the {listen[port].component} "
                                f"binds {listen[port].host}: kubelet probes the pod IP")
    # Probes and Services must exist where the brief asks for them.
    sidecars = [(i, c) for i, c, *_ in k8s_invocations(objects) if i.subcommand == "sidecar"]
    assert sidecars, "no monitor sidecar container"
    for inv, c in sidecars:
        assert c.get("readinessProbe") and c.get("livenessProbe"), f"{inv.where}: needs readiness and liveness"
    # Services: each targetPort reaches a declared container port; monitor ports must not be loopback.
    workloads = [(o, pod_template(o)) for _, o in objects if pod_template(o) is not None]
    for fname, svc in objects:
        if svc["kind"] != "Service":
            continue
        selector = svc["spec"].get("selector") or {}
        pods = [(o, t) for o, t in workloads
                if selector and all(((t.get("metadata") or {}).get("labels") or {}).get(k) == v
                                    for k, v in selector.items())]
        if not pods:
            problems.append(f"{fname}: Service/{svc['metadata']['name']} selects no pod template here")
        for o, t in pods:
            containers = all_containers(t["spec"])
            has_proxy = any(listen_has(monitor_containers.get(id(c)), "capture proxy") for c in containers)
            for p in svc["spec"].get("ports") or []:
                tp = p.get("targetPort", p["port"])
                hits = [(c, _resolve_port(c, tp)) for c in containers
                        if _resolve_port(c, tp) in {q["containerPort"] for q in c.get("ports") or []}]
                where = f"{fname}: Service/{svc['metadata']['name']} port {p['port']} -> {tp}"
                if not hits:
                    problems.append(f"{where}: no container of {o['kind']}/{o['metadata']['name']} declares it")
                for c, port in hits:
                    listen = monitor_containers.get(id(c))
                    if listen is None:
                        if has_proxy:
                            problems.append(f"{where}: reaches {c['name']}:{port} directly, bypassing the "
                                            "capture proxy")
                        continue
                    if port not in listen:
                        problems.append(f"{where}: the monitor does not listen on {port}")
                    elif listen[port].loopback:
                        problems.append(f"{where}: the {listen[port].component} binds {listen[port].host}")
    assert not problems, "\n".join(problems)


def listen_has(listen: dict[int, Listener] | None, component: str) -> bool:
    return bool(listen) and any(l.component == component for l in listen.values())


def test_k8s_sidecar_wiring(tmp_path):
    """Upstream, OTLP endpoint, spool volume, GPU count and Kafka partitions fit together."""
    problems = []
    ingest_replicas = []
    partitions = set()
    for inv, c, spec, obj, sub, s in _k8s_settings(tmp_path, k8s_objects()):
        if sub in ("sidecar", "ingest"):
            if not s.kafka.bootstrap_servers:
                problems.append(f"{inv.where}: no Kafka bootstrap servers")
            partitions.add(s.kafka.partitions)
        if sub == "ingest":
            ingest_replicas.append(obj["spec"].get("replicas", 1))
            if s.store.is_embedded:
                problems.append(f"{inv.where}: ingest in a pod needs a ClickHouse server URL, not {s.store.url}")
        if sub != "sidecar":
            continue
        others = [o for o in spec["containers"] if o is not c]
        other_ports = {p["containerPort"] for o in others for p in o.get("ports") or []}
        up = urlsplit(s.proxy.upstream or "")
        if up.hostname not in LOOPBACK or up.port not in other_ports:
            problems.append(f"{inv.where}: --upstream {s.proxy.upstream} is not a container in this pod "
                            f"(ports {sorted(other_ports)})")
        for o in others:
            args = [str(a) for a in [*(o.get("command") or []), *(o.get("args") or [])]]
            for i, a in enumerate(args):
                if a.startswith("--otlp-traces-endpoint"):
                    url = urlsplit(a.partition("=")[2] if "=" in a else args[i + 1])
                    if url.port != s.receiver.grpc_port or url.hostname not in LOOPBACK:
                        problems.append(f"{inv.where}: {o['name']} sends traces to {url.geturl()}, the "
                                        f"receiver is on 127.0.0.1:{s.receiver.grpc_port}")
            gpus = (o.get("resources") or {}).get("limits", {}).get("nvidia.com/gpu")
            if gpus is not None and s.gpu.enabled and s.gpu.gpus_per_request != int(gpus):
                problems.append(f"{inv.where}: {o['name']} has {gpus} GPU(s) but gpu.gpus_per_request is "
                                f"{s.gpu.gpus_per_request} (cost would count every GPU NVML sees)")
        spool = str(s.spool.path)
        mount = under(spool, inv.mounts) if PurePosixPath(spool).is_absolute() else None
        claims = {(t.get("metadata") or {}).get("name") for t in obj["spec"].get("volumeClaimTemplates") or []}
        mount_volume = next((m["name"] for m in c.get("volumeMounts") or [] if m["mountPath"] == mount), None)
        if mount is None:
            problems.append(f"{inv.where}: spool {spool} is not on a mounted volume")
        elif obj["kind"] == "StatefulSet" and mount_volume not in claims:
            problems.append(f"{inv.where}: spool volume {mount_volume!r} is not a volumeClaimTemplate")
        env = {e["name"]: e.get("value") for e in c.get("env") or []}
        if env.get("NVIDIA_VISIBLE_DEVICES") != "all" or spec.get("runtimeClassName") != "nvidia":
            problems.append(f"{inv.where}: NVML needs NVIDIA_VISIBLE_DEVICES=all and runtimeClassName nvidia "
                            "(see the comment in sidecar-pod.yaml)")
    if ingest_replicas and partitions and max(ingest_replicas) > min(partitions):
        problems.append(f"ingest runs {max(ingest_replicas)} replicas but kafka.partitions is {min(partitions)}: "
                        "the extra consumers would sit idle")
    if len(partitions) > 1:
        problems.append(f"sidecar and ingest disagree on kafka.partitions: {sorted(partitions)}")
    assert not problems, "\n".join(problems)


# ============================================================================ tests: compose


def test_compose_services_and_structure():
    doc = compose_doc()
    services = doc.get("services") or {}
    assert set(services) == COMPOSE_SERVICES, sorted(services)
    problems = []
    for name, svc in services.items():
        if not svc.get("image") and not svc.get("build"):
            problems.append(f"{name}: needs image or build")
        try:
            ports = compose_container_ports(svc)
        except (ValueError, KeyError) as exc:
            problems.append(f"{name}: unreadable ports ({exc})")
            continue
        for port, _ip in ports:
            if not 1 <= port <= 65535:
                problems.append(f"{name}: invalid port {port}")
        for kind, src, target in compose_mounts(svc):
            if kind == "bind" and not (COMPOSE / src).exists():
                problems.append(f"{name}: bind source {src} does not exist")
            if kind == "volume" and src and src not in (doc.get("volumes") or {}):
                problems.append(f"{name}: named volume {src} is not declared")
        for dep, cond in (svc.get("depends_on") or {}).items() if isinstance(svc.get("depends_on"), dict) else []:
            if dep not in services:
                problems.append(f"{name}: depends on unknown service {dep}")
            if (cond or {}).get("condition") == "service_healthy" and not services[dep].get("healthcheck"):
                problems.append(f"{name}: waits for {dep} to be healthy, which has no healthcheck")
    assert not problems, "\n".join(problems)

    assert services["kafka"]["image"] == "apache/kafka:4.1.0"
    kenv = compose_env(services["kafka"])
    assert kenv["KAFKA_PROCESS_ROLES"].replace(" ", "") in ("broker,controller", "controller,broker")
    assert any(t.startswith("/var/lib/kafka/data") for _k, _s, t in compose_mounts(services["kafka"]))
    assert kenv.get("KAFKA_LOG_DIRS") == "/var/lib/kafka/data"

    ch = services["clickhouse"]
    assert ch["image"] == "clickhouse/clickhouse-server:25.8" and ch.get("healthcheck")
    binds = {t: s for k, s, t in compose_mounts(ch) if k == "bind"}
    assert binds.get("/etc/clickhouse-server/config.d/system-log-ttl.xml") == \
        "../clickhouse/config.d/system-log-ttl.xml"
    assert binds.get("/etc/clickhouse-server/users.d/monitor-users.xml") == "../clickhouse/users.d/monitor-users.xml"
    assert any(k == "volume" and t == "/var/lib/clickhouse" for k, _s, t in compose_mounts(ch))

    ingest = services["ingest"]
    assert {d: c["condition"] for d, c in ingest["depends_on"].items()} == \
        {"kafka": "service_healthy", "clickhouse": "service_healthy"}
    for name in ("ingest", "sidecar"):
        assert services[name].get("restart") in ("unless-stopped", "always", "on-failure"), name

    vllm = services["vllm"]
    assert image_name(vllm["image"]) == "vllm-openai"
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d.get("capabilities", []) for d in devices)
    side = services["sidecar"]
    side_devices = (((side.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices")
    assert side.get("runtime") == "nvidia" or any(
        {"gpu", "utility"} & set(d.get("capabilities", [])) for d in side_devices or []), "sidecar needs NVML"


def test_clickhouse_password_override_matches_the_ingest_url():
    """clickhouse-passwords.xml sets the users' passwords from the env the compose file gives ClickHouse,
    and the ingest URL uses the same password and a user monitor-users.xml defines."""
    services = compose_doc()["services"]
    binds = {t: s for k, s, t in compose_mounts(services["clickhouse"]) if k == "bind"}
    users_xml = ET.parse(ROOT / "deploy" / "clickhouse" / "users.d" / "monitor-users.xml").getroot().find("users")
    overrides = [COMPOSE / s for t, s in binds.items() if t.startswith("/etc/clickhouse-server/users.d/")
                 and (COMPOSE / s).resolve().parent == COMPOSE.resolve()]
    ch_env = compose_env(services["clickhouse"])
    passwords = {}
    for path in overrides:
        target = next(t for t, s in binds.items() if COMPOSE / s == path)
        assert PurePosixPath(target).name > "monitor-users.xml", "the override must merge after monitor-users.xml"
        for user in ET.parse(path).getroot().find("users"):
            assert users_xml.find(user.tag) is not None, f"{path.name}: unknown user {user.tag}"
            pw = user.find("password")
            assert pw is not None and pw.get("from_env") in ch_env, f"{path.name}: {user.tag} password env"
            passwords[user.tag] = ch_env[pw.get("from_env")]
    _g, _sub, rest = split_invocation(dict(compose_invocations(compose_doc()))["ingest"].argv)
    url = urlsplit(rest[rest.index("--clickhouse") + 1])
    assert url.hostname == "clickhouse" and url.username in passwords
    assert unquote(url.password or "") == passwords[url.username]


def test_compose_ports_healthchecks_and_wiring(tmp_path):
    doc = compose_doc()
    services = doc["services"]
    problems = []
    listening: dict[str, dict[int, Listener]] = {}
    for name, inv in compose_invocations(doc):
        if inv.future and inv.subcommand not in main.commands:
            continue
        sub, s = run_until_start(inv, tmp_path)
        listen = listeners(sub, s, inv.app)
        listening[name] = listen
        svc = services[name]
        for port, _ip in compose_container_ports(svc):
            if port not in listen:
                problems.append(f"{inv.where}: publishes {port}, `monitor {sub}` listens on {sorted(listen)}")
            elif listen[port].loopback:
                problems.append(f"{inv.where}: publishes {port}, but the {listen[port].component} binds "
                                f"{listen[port].host} inside the container")
        test = (svc.get("healthcheck") or {}).get("test") or []
        for port in re.findall(r"https?://[^/:\s'\"]+:(\d+)", " ".join(map(str, test))):
            if int(port) not in listen:
                problems.append(f"{inv.where}: healthcheck on port {port}, nothing listens there")
        if sub in ("sidecar", "ingest"):
            for server in s.kafka.bootstrap_servers:
                host, _, port = server.rpartition(":")
                advertised = compose_env(services.get(host, {})).get("KAFKA_ADVERTISED_LISTENERS", "")
                if f"//{host}:{port}" not in advertised:
                    problems.append(f"{inv.where}: Kafka {server} is not an advertised listener of a service")
        if sub == "sidecar":
            up = urlsplit(s.proxy.upstream or "")
            target = services.get(up.hostname or "")
            if target is None or up.port not in {p for p, _ in compose_container_ports(target)}:
                problems.append(f"{inv.where}: --upstream {s.proxy.upstream} is not a service exposing that port")
            spool = str(s.spool.path)
            vol = under(spool, [t for k, _s, t in compose_mounts(svc) if k == "volume"])
            if not PurePosixPath(spool).is_absolute() or vol is None:
                problems.append(f"{inv.where}: spool {spool} is not on a named volume")
            if s.gpu.gpus_per_request is None:
                problems.append(f"{inv.where}: set MONITOR_GPU__GPUS_PER_REQUEST (the sidecar sees every GPU)")
    # Model servers send OTLP to a receiver that other containers can reach.
    for name, svc in services.items():
        command = svc.get("command") or []
        command = shlex.split(command) if isinstance(command, str) else [interpolate(str(c)) for c in command]
        for i, a in enumerate(command):
            if a.startswith("--otlp-traces-endpoint"):
                url = urlsplit(a.partition("=")[2] if "=" in a else command[i + 1])
                listen = listening.get(url.hostname or "", {})
                got = listen.get(url.port or 0)
                if got is None or got.component != "OTLP/gRPC receiver" or got.loopback:
                    problems.append(f"service {name}: --otlp-traces-endpoint {url.geturl()} does not reach an "
                                    "OTLP/gRPC receiver bound to 0.0.0.0")
    assert not problems, "\n".join(problems)


# ============================================================================ tests: Dockerfile


def test_dockerfile():
    text = DOCKERFILE.read_text()
    assert dockerfile_entrypoint() == ["monitor"]
    froms = re.findall(r"^\s*FROM\s+(\S+)", text, re.M | re.I)
    assert froms and froms[-1].startswith("python:3.11-slim")
    users = re.findall(r"^\s*USER\s+(\S+)", text, re.M | re.I)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must not run as root"
    assert re.search(r"pip install[^\n]*\s\.(\s|$)", text), "installs the project from the build context"
    # The compose build context is the repository root, and what the Dockerfile copies exists there.
    for name, svc in compose_doc()["services"].items():
        build = svc.get("build")
        if isinstance(build, dict) and (COMPOSE / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE:
            assert (COMPOSE / build["context"]).resolve() == ROOT, name
    for line in re.findall(r"^\s*COPY\s+(?!--from)(.+)$", text, re.M | re.I):
        *sources, _dest = line.split()
        for src in sources:
            if not src.startswith("--"):
                assert (ROOT / src).exists(), f"COPY {src}: not in the build context"
    ignore = DOCKERFILE.with_name(DOCKERFILE.name + ".dockerignore")
    if ignore.exists():
        excluded = {l.strip() for l in ignore.read_text().splitlines() if l.strip() and not l.startswith("#")}
        for src in ("pyproject.toml", "README.md", "monitor", "schemas"):
            assert src not in excluded, f"{ignore.name} excludes {src}, which the build needs"
