#!/usr/bin/env python3
"""Consistency check of deploy/ against the real binaries.

Every way deploy/ starts `switchyard-cp` or `switchyard-agent` must use flags
and environment variables that the binaries really have:

- YAML under deploy/ (Kubernetes manifests, compose files) parses, every
  document of it; kustomization.yaml lists exactly the manifests beside it;
- systemd units parse, have [Unit], [Service] and [Install], and an
  ExecStart that names one of the binaries by absolute path;
- the flags of every invocation of the binaries are collected from systemd
  ExecStart lines, Kubernetes container commands and args, compose commands
  and entrypoints, the Dockerfile's CMD/ENTRYPOINT, and shell lines in the
  Markdown files' code blocks;
- every SWITCHYARD_* variable is collected from systemd Environment= lines
  and environment files, container env and the ConfigMaps they load, compose
  environment and env_file, and checked against the binary that reads it
  (any other SWITCHYARD_* word under deploy/ must belong to one of them);
- the flags and variables a binary has are read from its `--help`;
- what a start would refuse is found before it runs: a metrics port beyond
  loopback without --insecure-metrics, gRPC beyond loopback without TLS or
  with --auth off, --tls-cert without --tls-key, an https:// control plane
  without --ca-cert (systemd: the unit with its example environment file);
- files the containers' settings name (certificates, keys, token files) lie
  under one of their volumes; a Kubernetes Secret mounted there has a key
  for each file read; a file the program writes is not on a read-only
  volume;
- Kubernetes liveness and readiness probes GET /healthz and /ready on the
  metrics port (a gRPC probe cannot present a client certificate).

Unless --no-smoke is given, it then starts both programs as deploy/systemd
installs them (each unit with its example environment file: mutual TLS,
authentication, the bootstrap token file, https:// control planes, the
node's certificate), with certificates from scripts/dev-certs, host paths
moved into a temporary directory (SQLite store included) and loopback
ports, and checks that the control plane answers GET /healthz and /ready
with 200 on its metrics port, and so does the agent once it has synced its
configuration from it over mutual TLS; every path the Kubernetes probes use
is asked too. Both must refuse a metrics port beyond loopback without
--insecure-metrics, naming the flag. Needs openssl.

Unless --no-self-test is given, it plants mistakes in a copy of deploy/
(each flag and variable it found, renamed; YAML broken; ExecStart removed;
--insecure-metrics removed; probe paths swapped; mounts moved; Secret keys
renamed) and fails if any of them goes unnoticed, so a check that silently
checks nothing cannot pass.

Run by scripts/test. To run it alone (needs PyYAML, see requirements.txt):

    cargo build --workspace --bins
    python3 tests/deploy/check_deploy.py

Environment:
    SWITCHYARD_CP_BIN      control-plane binary (default: target/debug/switchyard-cp)
    SWITCHYARD_AGENT_BIN   agent binary (default: target/debug/switchyard-agent)
"""

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import yaml

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

BINARIES = {
    "switchyard-cp": "SWITCHYARD_CP_BIN",
    "switchyard-agent": "SWITCHYARD_AGENT_BIN",
}
# Read by both programs' log filter, not by their argument parser, so their
# --help does not list it.
LOG_FILTER_ENV = "SWITCHYARD_LOG"

ENV_WORD = re.compile(r"\bSWITCHYARD_[A-Z0-9_]*[A-Z0-9]\b")
# Words that end a command in a shell line.
SHELL_OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>", "2>&1", "&>", ")"}
SHELLS = {"sh", "bash", "dash", "ash"}


# ---------------------------------------------------------------------------
# What the binaries accept
# ---------------------------------------------------------------------------


class Cli:
    """The flags and variables of one binary, read from its --help."""

    def __init__(self, name, help_text):
        self.name = name
        self.flags = {}  # "--long" or "-s" -> takes a value
        self.env = {LOG_FILTER_ENV}
        self.positional = False
        self.flag_env = {}  # "--long" -> the variable that sets it too
        self.defaults = {}  # "--long" -> its default value
        self.value_names = {}  # "--long" -> "FILE", "PATH", ...
        last = None
        for line in help_text.splitlines():
            if line.startswith("Usage:"):
                words = line.split()[2:]
                self.positional = any(
                    w.strip("[]").startswith("<") or w.strip("[]").isupper()
                    for w in words
                    if w != "[OPTIONS]"
                )
            m = re.match(
                r"^\s+(?:-(?P<short>[A-Za-z0-9]),\s+)?--(?P<long>[A-Za-z0-9][A-Za-z0-9-]*)"
                r"(?P<value>[ =]<[^>]+>)?",
                line,
            )
            if m:
                takes_value = m.group("value") is not None
                last = "--" + m.group("long")
                self.flags[last] = takes_value
                if takes_value:
                    self.value_names[last] = m.group("value").strip(" =<>")
                if m.group("short"):
                    self.flags["-" + m.group("short")] = takes_value
            else:
                m = re.match(r"^\s+-(?P<short>[A-Za-z0-9])(?P<value>\s+<[^>]+>)?\s", line)
                if m:
                    self.flags["-" + m.group("short")] = m.group("value") is not None
            self.env.update(re.findall(r"\[env: ([A-Z0-9_]+)=", line))
            if last is not None:
                m = re.search(r"\[env: ([A-Z0-9_]+)=", line)
                if m:
                    self.flag_env[last] = m.group(1)
                m = re.search(r"\[default: ([^\]]*)\]", line)
                if m:
                    self.defaults[last] = m.group(1)

    def file_flags(self):
        """Flags whose value is a file the program reads or writes."""
        return [f for f, v in self.value_names.items() if v in ("FILE", "PATH")]


def load_cli(name, path):
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise SystemExit(
            f"check_deploy: {name} binary not found at {path}: build it "
            f"(cargo build --workspace --bins) or set {BINARIES[name]}"
        )
    # Variables set in this environment would show up in --help as values.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    env["NO_COLOR"] = "1"
    try:
        out = subprocess.run(
            [path, "--help"], env=env, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SystemExit(f"check_deploy: cannot run {path} --help: {e}")
    if out.returncode != 0:
        raise SystemExit(
            f"check_deploy: {path} --help exited {out.returncode}:\n{out.stderr}"
        )
    cli = Cli(name, out.stdout)
    cli.path = os.path.abspath(path)
    if "--help" not in cli.flags or len(cli.flags) < 3:
        raise SystemExit(
            f"check_deploy: could not read the flags of {name} from its --help:\n{out.stdout}"
        )
    return cli


# ---------------------------------------------------------------------------
# What one invocation sets: flags, then variables, then --help's defaults
# ---------------------------------------------------------------------------

TRUTHY = {"true", "1", "yes", "on", "y"}


class Settings:
    """The effective settings of one start of a binary: its arguments (exec
    form) and the variables set for it. A flag wins over its variable, which
    wins over the default, as in clap."""

    def __init__(self, cli, args, env):
        self.cli = cli
        self.args = [str(a) for a in args]
        self.env = {str(k): (None if v is None else str(v)) for k, v in env.items()}

    def values(self, flag):
        """Every value given for `flag` (a repeatable flag may have several);
        else its variable's (comma-separated for the list ones), else the
        default; [] when none."""
        out = []
        for i, a in enumerate(self.args):
            if a == flag and i + 1 < len(self.args):
                out.append(self.args[i + 1])
            elif a.startswith(flag + "="):
                out.append(a.split("=", 1)[1])
        if out:
            return out
        var = self.cli.flag_env.get(flag)
        if var and self.env.get(var) is not None:
            value = self.env[var]
            return [v for v in value.split(",") if v] if flag in LIST_FLAGS else [value]
        if flag in self.cli.defaults:
            return [self.cli.defaults[flag]]
        return []

    def value(self, flag):
        values = self.values(flag)
        return values[-1] if values else None

    def switch(self, flag):
        """A boolean flag: given, or its variable truthy."""
        if flag in self.args:
            return True
        var = self.cli.flag_env.get(flag)
        return var is not None and (self.env.get(var) or "").strip().lower() in TRUTHY

    def named(self, flag):
        var = self.cli.flag_env.get(flag)
        return f"{flag} ({var})" if var else flag


# Flags whose variable holds a comma-separated list.
LIST_FLAGS = {"--control-plane", "--label"}


def listen_host(value):
    """The host of a HOST:PORT listen address; None for `off`."""
    value = (value or "").strip()
    if value in ("", "off"):
        return None
    host = value.rsplit(":", 1)[0] if ":" in value else value
    return host.strip("[]")


def is_loopback(host):
    """Whether a listen host is certainly loopback; a variable ($(POD_IP),
    ${HOST}) or a name other than localhost is not."""
    if "$" in host:
        return False
    return host == "localhost" or host == "::1" or re.match(r"^127\.[0-9.]+$", host) is not None


def listen_port(value):
    m = re.search(r":([0-9]+)$", (value or "").strip())
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------
# Findings
# ---------------------------------------------------------------------------


class Checker:
    def __init__(self, root, clis):
        self.root = root = os.path.abspath(root)
        self.deploy = os.path.join(root, "deploy")
        self.clis = clis
        self.errors = []
        # (relative file, "flag" or "env", name) of everything checked.
        self.uses = []
        self.files = set()
        # (binary, path) of every Kubernetes httpGet probe.
        self.probes = set()
        # (relative file, mount path) of every container mount a file
        # setting lies under, and (relative file, key) of every Secret key
        # one reads: where the self-test plants mistakes.
        self.mount_uses = set()
        self.secret_key_uses = set()

    def rel(self, path):
        return os.path.relpath(path, self.root)

    def error(self, path, where, message):
        loc = self.rel(path) + (f" ({where})" if where else "")
        self.errors.append(f"{loc}: {message}")

    # -- flags ---------------------------------------------------------------

    def check_args(self, binary, args, path, where, shell=False):
        """Checks the arguments that follow `binary` in one invocation."""
        cli = self.clis[binary]
        i = 0
        while i < len(args):
            tok = args[i]
            if shell and (
                tok in SHELL_OPERATORS
                or set(tok) <= set(";&|<>()")
                or (tok.isdigit() and i + 1 < len(args) and args[i + 1][:1] in "<>")
            ):
                break  # the command ends: operator or redirection
            if tok == "--":
                break
            if "$" in tok:
                # Expanded at run time (systemd or shell variable): opaque.
                i += 1
                continue
            if tok.startswith("-") and len(tok) > 1:
                flag, eq, _ = tok.partition("=")
                if not flag.startswith("--") and len(flag) > 2:
                    flag = flag[:2]  # -xVALUE
                self.uses.append((self.rel(path), "flag", flag))
                if flag not in cli.flags:
                    self.error(
                        path, where,
                        f"{binary} has no flag {flag} (its flags: "
                        f"{', '.join(sorted(f for f in cli.flags if f.startswith('--')))})",
                    )
                    # Its value, most likely: one report is enough.
                    if not eq and i + 1 < len(args) and not args[i + 1].startswith("-"):
                        i += 1
                elif cli.flags[flag]:
                    if not eq and len(tok) == len(flag):
                        if i + 1 >= len(args) or (shell and args[i + 1] in SHELL_OPERATORS):
                            self.error(path, where, f"{binary} {flag} needs a value")
                        i += 1
                elif eq:
                    self.error(path, where, f"{binary} {flag} takes no value")
            elif not cli.positional:
                self.error(
                    path, where,
                    f"{binary} takes no positional argument, got {tok!r} "
                    "(a misspelt flag, or a value without its flag?)",
                )
            i += 1

    def check_argv(self, argv, path, where, must_be_ours=False):
        """Checks an exec-form command line. Returns the binary it runs, if ours."""
        if not argv:
            if must_be_ours:
                self.error(path, where, "runs the Switchyard image with no command")
            return None
        base = os.path.basename(str(argv[0]))
        if base in self.clis:
            self.check_args(base, [str(a) for a in argv[1:]], path, where)
            return base
        if base in SHELLS and "-c" in argv[1:-1]:
            script = str(argv[argv.index("-c") + 1])
            found = self.check_shell(script, path, where)
            if must_be_ours and not found:
                self.error(path, where, f"runs neither {' nor '.join(self.clis)}")
            return found[0] if len(set(found)) == 1 else None
        if must_be_ours:
            self.error(
                path, where,
                f"runs {argv[0]!r} from the Switchyard image, which has only "
                f"{' and '.join(self.clis)}",
            )
        return None

    def check_shell(self, text, path, where):
        """Checks every invocation of the binaries in shell text."""
        found = []
        text = re.sub(r"\\\n", " ", text)
        for line in text.splitlines():
            if not any(b in line for b in self.clis):
                continue
            try:
                lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>()")
                lexer.whitespace_split = True
                lexer.commenters = "#"
                words = list(lexer)
            except ValueError as e:
                self.error(path, where, f"cannot split shell line {line.strip()!r}: {e}")
                continue
            for i, w in enumerate(words):
                if invokes(words, i, self.clis):
                    binary = os.path.basename(w)
                    found.append(binary)
                    self.check_args(binary, words[i + 1:], path, where, shell=True)
        return found

    # -- environment variables --------------------------------------------------

    def check_env(self, binary, name, path, where):
        if not name.startswith("SWITCHYARD_"):
            return
        self.uses.append((self.rel(path), "env", name))
        if name not in self.clis[binary].env:
            self.error(
                path, where,
                f"{binary} does not read {name} (it reads: "
                f"{', '.join(sorted(self.clis[binary].env))})",
            )

    def scan_env_words(self, path, text):
        """Any SWITCHYARD_* word must be read by at least one binary."""
        known = set().union(*(c.env for c in self.clis.values()))
        for n, line in enumerate(text.splitlines(), 1):
            for name in ENV_WORD.findall(line):
                self.uses.append((self.rel(path), "env", name))
                if name not in known:
                    self.error(path, f"line {n}", f"no Switchyard binary reads {name}")


    # -- settings the binaries would refuse at start ----------------------------

    def invocation(self, argv):
        """(binary, args) of an exec-form command line running one of ours,
        else (None, None)."""
        if not argv:
            return None, None
        base = os.path.basename(str(argv[0]))
        if base in self.clis:
            return base, [str(a) for a in argv[1:]]
        return None, None

    def check_settings(self, binary, settings, path, where):
        """What the binary would refuse at start, found before it runs:
        secure-by-default refusals and flags that need each other."""
        cli = self.clis[binary]
        has = lambda flag: flag in cli.flags  # noqa: E731
        given = lambda flag: settings.value(flag) is not None  # noqa: E731
        if has("--metrics-listen") and has("--insecure-metrics"):
            addr = settings.value("--metrics-listen")
            host = listen_host(addr)
            if host is not None and not is_loopback(host) and not settings.switch("--insecure-metrics"):
                self.error(
                    path, where,
                    f"{binary} refuses metrics on {addr} beyond loopback without "
                    f"{settings.named('--insecure-metrics')}",
                )
        if has("--listen") and has("--insecure-plaintext"):
            addr = settings.value("--listen")
            host = listen_host(addr)
            tls = given("--tls-cert")
            if host is not None and not is_loopback(host):
                if not tls and not settings.switch("--insecure-plaintext"):
                    self.error(
                        path, where,
                        f"{binary} refuses to serve {addr} beyond loopback without TLS: "
                        f"give {settings.named('--tls-cert')} and {settings.named('--tls-key')}",
                    )
                auth = (settings.value("--auth") or "").strip().lower()
                if auth == "off" and not settings.switch("--insecure-no-auth"):
                    self.error(
                        path, where,
                        f"{binary} refuses to serve {addr} beyond loopback with --auth off "
                        f"without {settings.named('--insecure-no-auth')}",
                    )
        for a, b in (("--tls-cert", "--tls-key"), ("--tls-key", "--tls-cert"), ("--client-ca", "--tls-cert")):
            if has(a) and has(b) and given(a) and not given(b):
                self.error(path, where, f"{binary} {settings.named(a)} needs {settings.named(b)}")
        if has("--control-plane") and has("--ca-cert"):
            for url in settings.values("--control-plane"):
                if url.startswith("https://") and not given("--ca-cert"):
                    self.error(path, where, f"{binary}: the https:// control plane {url} needs {settings.named('--ca-cert')}")

    def file_settings(self, binary, settings):
        """(flag, path) of every file the invocation names."""
        out = []
        for flag in self.clis[binary].file_flags():
            for value in settings.values(flag):
                if value.startswith("/"):
                    out.append((flag, value))
        return out

    def check_files_mounted(self, binary, settings, mounts, path, where, what):
        """Every file setting lies under one of `mounts` ({mount path:
        description}): in a container, the image has none of these files."""
        for flag, file in self.file_settings(binary, settings):
            under = [m for m in mounts if file == m or file.startswith(m.rstrip("/") + "/")]
            self.mount_uses.update((self.rel(path), m) for m in under)
            if not under:
                self.error(
                    path, where,
                    f"{binary} {settings.named(flag)} {file} is not under any {what} "
                    f"({', '.join(sorted(mounts)) or 'none'})",
                )

    # -- files -------------------------------------------------------------------

    def run(self):
        if not os.path.isdir(self.deploy):
            self.error(self.deploy, None, "missing")
            return
        paths = []
        for dirpath, dirnames, filenames in os.walk(self.deploy):
            dirnames.sort()
            paths.extend(os.path.join(dirpath, f) for f in sorted(filenames))
        yaml_docs = {}
        for path in paths:
            if path.endswith((".yaml", ".yml")):
                yaml_docs[path] = self.load_yaml(path)
        dockerfile = os.path.join(self.deploy, "docker", "Dockerfile")
        image_default = self.check_dockerfile(dockerfile) if os.path.exists(dockerfile) else ([], [])
        k8s_dir = os.path.join(self.deploy, "kubernetes")
        k8s = {p: d for p, d in yaml_docs.items() if p.startswith(k8s_dir + os.sep) and d is not None}
        if k8s:
            self.check_kubernetes(k8s, image_default)
        for path, docs in yaml_docs.items():
            if docs is not None and re.match(r"(docker-)?compose[^/]*\.ya?ml$", os.path.basename(path)):
                self.check_compose(path, docs, image_default)
        for path in paths:
            name = os.path.basename(path)
            if name.endswith(".service"):
                self.check_unit(path)
            elif name.endswith(".md"):
                self.check_markdown(path)
        for path in paths:
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except UnicodeDecodeError:
                continue
            self.files.add(self.rel(path))
            self.scan_env_words(path, text)

    def load_yaml(self, path):
        try:
            with open(path, encoding="utf-8") as f:
                return [d for d in yaml.safe_load_all(f) if d is not None]
        except yaml.YAMLError as e:
            self.error(path, None, f"invalid YAML: {e}")
            return None

    # -- Dockerfile ----------------------------------------------------------------

    def check_dockerfile(self, path):
        """Checks CMD/ENTRYPOINT of the last stage; returns (entrypoint, cmd)."""
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        instructions = []  # (line number, keyword, rest)
        buf, start = "", 0
        for n, line in enumerate(lines, 1):
            if not buf and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if buf and line.lstrip().startswith("#"):
                continue
            if not buf:
                start = n
            if line.rstrip().endswith("\\"):
                buf += line.rstrip()[:-1] + " "
                continue
            buf += line
            keyword, _, rest = buf.strip().partition(" ")
            instructions.append((start, keyword.upper(), rest.strip()))
            buf = ""
        entrypoint, cmd = [], []
        builds = set()
        for n, keyword, rest in instructions:
            if keyword == "FROM":
                entrypoint, cmd = [], []
            elif keyword in ("CMD", "ENTRYPOINT"):
                if rest.startswith("["):
                    try:
                        argv = json.loads(rest)
                    except json.JSONDecodeError as e:
                        self.error(path, f"line {n}", f"{keyword} is not a JSON array: {e}")
                        continue
                else:
                    argv = ["/bin/sh", "-c", rest]
                if keyword == "CMD":
                    cmd = argv
                else:
                    entrypoint, cmd = argv, []
            elif keyword == "RUN":
                builds.update(re.findall(r"target/release/(switchyard-[a-z]+)", rest))
        argv = entrypoint + cmd
        if argv:
            self.check_argv(argv, path, "CMD/ENTRYPOINT", must_be_ours=True)
            binary, args = self.invocation(argv)
            if binary:
                self.check_settings(binary, Settings(self.clis[binary], args, {}), path, "CMD/ENTRYPOINT")
        for binary in self.clis:
            if binary not in builds:
                self.error(path, None, f"no RUN instruction installs target/release/{binary}")
        return entrypoint, cmd

    # -- Kubernetes ------------------------------------------------------------------

    def check_kubernetes(self, files, image_default):
        objects = []  # (path, doc)
        for path, docs in files.items():
            for doc in docs:
                if not isinstance(doc, dict):
                    self.error(path, None, "a YAML document is not a mapping")
                    continue
                objects.append((path, doc))
        config_maps, secrets, services = {}, {}, set()
        for path, doc in objects:
            kind = doc.get("kind")
            name = (doc.get("metadata") or {}).get("name")
            if is_kustomization(path, doc):
                continue
            if not doc.get("apiVersion") or not kind or not name:
                self.error(path, None, "a document lacks apiVersion, kind or metadata.name")
                continue
            if kind == "ConfigMap":
                config_maps[name] = (path, doc.get("data") or {})
            elif kind == "Secret":
                secrets[name] = (path, {**(doc.get("data") or {}), **(doc.get("stringData") or {})})
            elif kind == "Service":
                services.add(name)
        for path, doc in objects:
            if is_kustomization(path, doc):
                self.check_kustomization(path, doc)
                continue
            pod = pod_spec(doc)
            if pod is None:
                continue
            what = f"{doc['kind']}/{doc['metadata']['name']}"
            for section in ("initContainers", "containers"):
                for c in pod.get(section) or []:
                    where = f"{what} container {c.get('name')}"
                    ours = is_switchyard_image(c.get("image"))
                    if "command" in c:
                        argv = list(c.get("command") or []) + list(c.get("args") or [])
                    else:
                        entrypoint, cmd = image_default if ours else ([], [])
                        argv = list(entrypoint) + list(c["args"] if "args" in c else cmd)
                    binary = self.check_argv(argv, path, where, must_be_ours=ours)
                    if binary is None:
                        continue
                    env = {}
                    for e in c.get("env") or []:
                        self.check_env(binary, e.get("name", ""), path, where)
                        # valueFrom: known only at run time.
                        env[e.get("name")] = e.get("value", "$(valueFrom)")
                    for src in c.get("envFrom") or []:
                        prefix = src.get("prefix", "")
                        for ref_kind, store in (("configMapRef", config_maps), ("secretRef", secrets)):
                            ref = src.get(ref_kind)
                            if not ref:
                                continue
                            if ref.get("name") not in store:
                                if ref_kind == "configMapRef" and not ref.get("optional"):
                                    self.error(path, where, f"envFrom names ConfigMap {ref.get('name')!r}, which is not in {self.rel(os.path.dirname(path))}")
                                continue
                            source, data = store[ref["name"]]
                            for key, value in data.items():
                                self.check_env(binary, prefix + key, source, f"{ref_kind} {ref['name']}, loaded by {where}")
                                env[prefix + key] = value
                    if binary == "switchyard-agent":
                        self.check_control_planes(env.get("SWITCHYARD_CONTROL_PLANES"), argv, services, path, where)
                    _, args = self.invocation(argv)
                    if args is None:
                        continue
                    settings = Settings(self.clis[binary], args, env)
                    self.check_settings(binary, settings, path, where)
                    self.check_pod_files(binary, settings, pod, c, secrets, path, where)
                    self.check_probes(binary, settings, c, path, where)

    def check_pod_files(self, binary, settings, pod, container, secrets, path, where):
        """The files a container's settings name come from its volumes: a
        Secret mounted there has a key for each file read, and a file the
        program writes (a PATH, such as --bootstrap-token-file) lies on a
        writable volume."""
        volumes = {v.get("name"): v for v in pod.get("volumes") or []}
        mounts = {}
        for m in container.get("volumeMounts") or []:
            volume = volumes.get(m.get("name"))
            if volume is None:
                self.error(path, where, f"volumeMount {m.get('mountPath')} names no volume of the pod: {m.get('name')!r}")
                continue
            mounts[m.get("mountPath", "")] = (m, volume)
        self.check_files_mounted(binary, settings, mounts, path, where, "volumeMount")
        cli = self.clis[binary]
        for flag, file in self.file_settings(binary, settings):
            for mount_path, (m, volume) in mounts.items():
                if not file.startswith(mount_path.rstrip("/") + "/"):
                    continue
                rel = file[len(mount_path.rstrip("/")) + 1:]
                read_only = m.get("readOnly") or "secret" in volume or "configMap" in volume
                if cli.value_names.get(flag) == "PATH" and read_only:
                    self.error(path, where, f"{binary} {settings.named(flag)} {file}: the program writes it, but {mount_path} is read-only")
                secret = volume.get("secret")
                if not secret or secret.get("optional"):
                    continue
                name = secret.get("secretName")
                if name not in secrets:
                    self.error(path, where, f"volume {volume.get('name')} names Secret {name!r}, which no manifest or example in {self.rel(os.path.dirname(path))} defines")
                    continue
                keys = [i.get("path") for i in secret.get("items")] if secret.get("items") else list(secrets[name][1])
                # $(VAR) is expanded by the kubelet: any text.
                pattern = "^" + re.sub(r"\\\$\\\([A-Za-z0-9_]+\\\)", ".+", re.escape(rel)) + "$"
                matched = [str(k) for k in keys if re.match(pattern, str(k))]
                self.secret_key_uses.update((self.rel(secrets[name][0]), k) for k in matched)
                if not matched:
                    self.error(path, where, f"{binary} {settings.named(flag)} {file}: Secret {name} (mounted at {mount_path}) has no key {rel} (its keys: {', '.join(map(str, keys))})")

    # Probe -> the paths it may use: /ready in a liveness probe would restart
    # every replica while the store is away; /healthz in a readiness probe
    # would send traffic to a replica that cannot serve it.
    PROBE_PATHS = {
        "startupProbe": ("/healthz", "/ready"),
        "livenessProbe": ("/healthz",),
        "readinessProbe": ("/ready",),
    }

    def check_probes(self, binary, settings, container, path, where):
        """Liveness and readiness probes GET /healthz and /ready on the
        metrics port: a gRPC probe could not present a client certificate."""
        ports = {p.get("name"): p.get("containerPort") for p in container.get("ports") or []}
        metrics_port = listen_port(settings.value("--metrics-listen"))
        for kind, allowed in self.PROBE_PATHS.items():
            probe = container.get(kind)
            if probe is None:
                if kind != "startupProbe":
                    self.error(path, where, f"no {kind}")
                continue
            http = probe.get("httpGet")
            if not isinstance(http, dict):
                self.error(path, where, f"{kind} must be httpGet {' or '.join(allowed)} on the metrics port (a gRPC probe cannot present a client certificate)")
                continue
            port = http.get("port")
            number = ports.get(port) if isinstance(port, str) else port
            if number is None:
                self.error(path, where, f"{kind} port {port!r} is no port of the container")
            elif number != metrics_port:
                self.error(path, where, f"{kind} probes port {number}, but {binary} serves /healthz and /ready on the metrics port {metrics_port}")
            probe_path = http.get("path")
            if probe_path not in allowed:
                self.error(path, where, f"{kind} GET {probe_path}: use {' or '.join(allowed)}")
            else:
                self.probes.add((binary, probe_path))

    def check_kustomization(self, path, doc):
        here = os.path.dirname(path)
        listed = set()
        for key in ("resources", "components", "patchesStrategicMerge"):
            for entry in doc.get(key) or []:
                if isinstance(entry, str) and "://" not in entry:
                    listed.add(os.path.normpath(os.path.join(here, entry)))
                    if not os.path.exists(os.path.join(here, entry)):
                        self.error(path, key, f"{entry} does not exist")
        for name in sorted(os.listdir(here)):
            full = os.path.normpath(os.path.join(here, name))
            if (
                name.endswith((".yaml", ".yml"))
                and not name.startswith("kustomization.")
                and ".example." not in name
                and full not in listed
            ):
                self.error(path, "resources", f"{name} is not listed (name it *.example.yaml if it is not meant to be applied)")

    def check_control_planes(self, value, argv, services, path, where):
        urls = [v for v in (value or "").split(",") if v]
        urls += [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--control-plane"]
        urls += [a.split("=", 1)[1] for a in argv if a.startswith("--control-plane=")]
        for url in urls:
            m = re.match(r"^https?://([^:/]+)", url)
            if m and not re.match(r"^[0-9.]+$", m.group(1)):
                service = m.group(1).split(".")[0]
                if service not in services:
                    self.error(path, where, f"control plane {url} names no Service defined here ({', '.join(sorted(services)) or 'none'})")

    # -- compose ---------------------------------------------------------------------

    def check_compose(self, path, docs, image_default):
        here = os.path.dirname(path)
        for doc in docs:
            services = (doc or {}).get("services")
            if not isinstance(services, dict):
                self.error(path, None, "no services")
                continue
            for name, svc in services.items():
                where = f"service {name}"
                if not isinstance(svc, dict):
                    self.error(path, where, "not a mapping")
                    continue
                build = svc.get("build")
                ours = is_switchyard_image(svc.get("image"))
                if isinstance(build, dict) and str(build.get("dockerfile", "")).endswith("deploy/docker/Dockerfile"):
                    ours = True
                entrypoint, cmd = image_default if ours else ([], [])
                if "entrypoint" in svc:
                    entrypoint, cmd = compose_argv(svc["entrypoint"]), []
                if "command" in svc:
                    cmd = compose_argv(svc["command"])
                argv = list(entrypoint) + list(cmd)
                if not ours and not argv:
                    continue
                binary = self.check_argv(argv, path, where, must_be_ours=ours)
                if binary is None:
                    continue
                env = {}
                environment = svc.get("environment") or {}
                if isinstance(environment, list):
                    environment = dict(
                        (e.split("=", 1) + [None])[:2] for e in environment
                    )
                env.update(environment)
                env_files = svc.get("env_file") or []
                if isinstance(env_files, (str, dict)):
                    env_files = [env_files]
                for ef in env_files:
                    ef_path = ef["path"] if isinstance(ef, dict) else ef
                    full = os.path.join(here, ef_path)
                    if not os.path.exists(full):
                        if not (isinstance(ef, dict) and ef.get("required") is False):
                            self.error(path, where, f"env_file {ef_path} does not exist")
                        continue
                    env.update(read_env_file(full))
                for key in env:
                    self.check_env(binary, str(key), path, where)
                if binary == "switchyard-agent":
                    self.check_control_planes(env.get("SWITCHYARD_CONTROL_PLANES"), [str(a) for a in argv], set(services), path, where)
                _, args = self.invocation(argv)
                if args is None:
                    continue
                settings = Settings(self.clis[binary], args, env)
                self.check_settings(binary, settings, path, where)
                targets = {}
                for v in svc.get("volumes") or []:
                    target = v.get("target") if isinstance(v, dict) else (str(v).split(":") + [""])[1]
                    if target:
                        targets[target] = v
                self.check_files_mounted(binary, settings, targets, path, where, "volume of the service")

    # -- systemd ---------------------------------------------------------------------

    def check_unit(self, path):
        sections = parse_unit(path, lambda n, msg: self.error(path, f"line {n}", msg))
        for s in ("Unit", "Service", "Install"):
            if s not in sections:
                self.error(path, None, f"no [{s}] section")
        service = sections.get("Service", {})
        execs = service.get("ExecStart", [])
        if len(execs) != 1:
            self.error(path, "[Service]", f"needs exactly one ExecStart, has {len(execs)}")
            return
        n, value = execs[0]
        value = value.lstrip("@-:+!")
        try:
            argv = shlex.split(value)
        except ValueError as e:
            self.error(path, f"line {n}", f"cannot split ExecStart: {e}")
            return
        if not argv or not argv[0].startswith("/"):
            self.error(path, f"line {n}", "ExecStart must start with an absolute path")
            return
        binary = self.check_argv(argv, path, f"line {n}, ExecStart", must_be_ours=True)
        if binary is None:
            return
        for n, value in service.get("Environment", []):
            try:
                assignments = shlex.split(value)
            except ValueError as e:
                self.error(path, f"line {n}", f"cannot split Environment: {e}")
                continue
            for a in assignments:
                self.check_env(binary, a.split("=", 1)[0], path, f"line {n}, Environment")
        env = {}
        for n, value in service.get("Environment", []):
            try:
                env.update(a.split("=", 1) for a in shlex.split(value) if "=" in a)
            except ValueError:
                pass  # reported above
        for n, value in service.get("EnvironmentFile", []):
            target = value.lstrip("-")
            example = os.path.join(os.path.dirname(path), os.path.basename(target) + ".example")
            if not os.path.exists(example):
                self.error(path, f"line {n}", f"EnvironmentFile {target} has no example {self.rel(example)} beside the unit")
                continue
            for key, (m, _) in read_env_file(example, with_lines=True, commented=True).items():
                self.check_env(binary, key, example, f"line {m}, read by {os.path.basename(path)}")
            # The settings the example makes (its commented lines are not).
            env.update(read_env_file(example))
        self.check_settings(binary, Settings(self.clis[binary], argv[1:], env), path, "as installed with its example environment file")

    # -- Markdown --------------------------------------------------------------------

    def check_markdown(self, path):
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        block, start, fence = [], 0, None
        for n, line in enumerate(lines, 1):
            m = re.match(r"^\s*(```+|~~~+)", line)
            if fence is None and m:
                fence, block, start = m.group(1), [], n + 1
            elif fence is not None and line.strip().startswith(fence):
                self.check_shell("\n".join(block), path, f"code block at line {start}")
                fence = None
            elif fence is not None:
                block.append(line)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


# Words after which a command name starts a command.
COMMAND_PREFIXES = {"sudo", "exec", "env", "nohup", "time", "xargs", "--"}


def invokes(words, i, binaries):
    """Whether words[i] runs one of `binaries` (not, say, `systemctl start
    switchyard-cp` or `journalctl -u switchyard-agent`)."""
    w = words[i]
    base = os.path.basename(w)
    if base not in binaries:
        return False
    if w != base and not w.startswith(("/", "./", "../", "target/")):
        return False  # daemonset/switchyard-agent and the like
    if i == 0:
        return True
    prev = words[i - 1]
    return (
        prev in SHELL_OPERATORS
        or prev in COMMAND_PREFIXES
        or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", prev) is not None
        or is_switchyard_image(prev)
        # docker compose exec SERVICE CMD, kubectl exec POD CMD, docker run IMAGE CMD
        or (i >= 2 and words[i - 2] in ("exec", "run") and not prev.startswith("-"))
    )


def pod_spec(doc):
    spec = doc.get("spec") or {}
    kind = doc.get("kind")
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        return (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get("spec")
    if kind in ("Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job"):
        return (spec.get("template") or {}).get("spec")
    return None


def is_kustomization(path, doc):
    return doc.get("kind") == "Kustomization" or os.path.basename(path).startswith("kustomization.")


def is_switchyard_image(image):
    if not image:
        return False
    last = str(image).split("/")[-1]
    return re.split(r"[:@]", last)[0] == "switchyard"


def compose_argv(value):
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return shlex.split(str(value))


def read_env_file(path, with_lines=False, commented=False):
    """KEY=VALUE lines; with `commented`, also `#KEY=VALUE` examples."""
    out = {}
    pattern = r"^\s*(?:#\s*)?(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$" if commented \
        else r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$"
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            m = re.match(pattern, line)
            if m:
                out[m.group(1)] = (n, m.group(2)) if with_lines else m.group(2)
    return out


def parse_unit(path, error):
    """A systemd unit: {section: {key: [(line, value), ...]}}."""
    sections, current = {}, None
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    i = 0
    while i < len(lines):
        n, line = i + 1, lines[i].strip()
        i += 1
        if not line or line[0] in "#;":
            continue
        while line.endswith("\\") and i < len(lines):
            nxt = lines[i].strip()
            i += 1
            if nxt and nxt[0] in "#;":
                continue
            line = line[:-1] + " " + nxt
        m = re.match(r"^\[([A-Za-z0-9-]+)\]$", line)
        if m:
            current = sections.setdefault(m.group(1), {})
            continue
        m = re.match(r"^([A-Za-z][A-Za-z0-9]*)\s*=\s*(.*)$", line)
        if not m:
            error(n, f"not a section header nor Key=Value: {line!r}")
            continue
        if current is None:
            error(n, "setting before any [Section]")
            continue
        current.setdefault(m.group(1), []).append((n, m.group(2)))
    return sections


# ---------------------------------------------------------------------------
# Self-test: planted mistakes must be caught
# ---------------------------------------------------------------------------


def self_test(root, clis, uses, mount_uses=(), secret_key_uses=()):
    """Returns the planted mistakes that went unnoticed."""
    missed = []
    mutations = []  # (relative file, description, transform, words expected in an error)
    seen = set()
    for rel, kind, name in uses:
        if (rel, name) in seen:
            continue
        seen.add((rel, name))
        if kind == "flag":
            bad = name + "-zz" if name.startswith("--") else "--zz"
            pattern = r"(?<![\w-])" + re.escape(name) + r"(?![\w-])"
        else:
            bad = name + "_ZZ"
            pattern = r"\b" + re.escape(name) + r"\b"
        mutations.append(
            (rel, f"{name} renamed {bad}",
             lambda text, p=pattern, b=bad: re.sub(p, b, text), [rel, bad])
        )
    files = sorted({rel for rel, _, _ in uses} | {
        os.path.relpath(os.path.join(d, f), root)
        for d, _, fs in os.walk(os.path.join(root, "deploy")) for f in fs
    })
    # Settings the binaries would refuse, and containers whose files or
    # probes point nowhere.
    insecure_metrics = [
        r"(?m)^[ \t]*- --insecure-metrics[ \t]*\n",
        r'"--insecure-metrics",\s*',
        r'(?m)^[ \t]*- name: SWITCHYARD_INSECURE_METRICS\n[ \t]*value: .*\n',
        r"(?m)^[ \t]*SWITCHYARD_INSECURE_METRICS: .*\n",
        r"(?m)^SWITCHYARD_INSECURE_METRICS=.*\n",
    ]

    def without_insecure_metrics(text):
        for p in insecure_metrics:
            text = re.sub(p, "", text)
        return text

    def probe_path(kind, old, new):
        pattern = r"(" + kind + r":\s*\n\s*httpGet:\s*\n\s*path:) " + re.escape(old) + r"\b"
        return lambda t: re.sub(pattern, r"\1 " + new, t)

    for rel in files:
        try:
            with open(os.path.join(root, rel), encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError):
            continue
        if without_insecure_metrics(text) != text:
            mutations.append((rel, "--insecure-metrics removed", without_insecure_metrics, [rel, "refuses metrics", "--insecure-metrics"]))
        for kind, old, new in (("livenessProbe", "/healthz", "/ready"), ("readinessProbe", "/ready", "/healthz")):
            transform = probe_path(kind, old, new)
            if transform(text) != text:
                mutations.append((rel, f"{kind} on {new}", transform, [rel, kind, f"GET {new}"]))
    for rel, mount in sorted(mount_uses):
        moved = mount.rstrip("/") + "-zz"
        mutations.append(
            (rel, f"mount {mount} moved to {moved}",
             lambda t, m=mount, n=moved: re.sub(r"(?<=[\s:])" + re.escape(m) + r"(?=[\s:\"]|$)", n, t, flags=re.M),
             [rel, "is not under any"])
        )
    for rel, key in sorted(secret_key_uses):
        mutations.append(
            (rel, f"Secret key {key} renamed {key}-zz",
             lambda t, k=key: re.sub(r"(?m)^(\s*)" + re.escape(k) + r":", r"\g<1>" + k + "-zz:", t),
             ["has no key"])
        )

    for rel in files:
        if rel.endswith((".yaml", ".yml")):
            mutations.append((rel, "broken YAML", lambda t: t + "\nbroken: [unclosed\n", [rel, "invalid YAML"]))
        elif rel.endswith(".service"):
            mutations.append((rel, "ExecStart removed",
                              lambda t: re.sub(r"(?m)^ExecStart=.*(\n[ \t].*)*$", "", t), [rel, "ExecStart"]))

    for rel, description, transform, expected in mutations:
        with tempfile.TemporaryDirectory(prefix="check-deploy-") as tmp:
            shutil.copytree(os.path.join(root, "deploy"), os.path.join(tmp, "deploy"))
            target = os.path.join(tmp, rel)
            with open(target, encoding="utf-8") as f:
                text = f.read()
            changed = transform(text)
            if changed == text:
                missed.append(f"{rel}: {description}: the mistake could not be planted")
                continue
            with open(target, "w", encoding="utf-8") as f:
                f.write(changed)
            checker = Checker(tmp, clis)
            checker.run()
            if not any(all(e in err for e in expected) for err in checker.errors):
                missed.append(f"{rel}: {description}: not reported (errors: {checker.errors or 'none'})")
    return len(mutations), missed


# ---------------------------------------------------------------------------
# Smoke test: both programs started as deploy/systemd sets them up
# ---------------------------------------------------------------------------

SMOKE_NODE = "smoke-node"
# How long each program may take to answer its probes.
SMOKE_READY_S = 30
# How long a refused start may take to exit.
SMOKE_REFUSAL_S = 10
# The certificates of scripts/dev-certs that the example files' names stand
# for (the README's install steps copy them to these names).
CERT_SOURCES = {
    "ca.pem": "ca.pem",
    "server.pem": "server.pem",
    "server.key": "server.key",
    "node.pem": f"node-{SMOKE_NODE}.pem",
    "node.key": f"node-{SMOKE_NODE}.key",
}
# Host paths of the units and examples, moved under the smoke directory.
HOST_ROOTS = ("/etc/switchyard", "/var/lib/switchyard")


class SmokeFailed(Exception):
    pass


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Never through a proxy from the environment: these are loopback ports.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(port, path, timeout=2):
    """(status, body) of GET http://127.0.0.1:PORT/PATH; status None when
    nothing answers."""
    try:
        with _NO_PROXY.open(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as e:
        return None, str(e)


class Unit:
    """A systemd unit and its example environment file, as installed, with
    host paths moved under `base` and the binary replaced by the built one."""

    def __init__(self, root, name, cli, base):
        self.cli = cli
        self.base = base
        path = os.path.join(root, "deploy", "systemd", name)
        errors = []
        sections = parse_unit(path, lambda n, msg: errors.append(f"line {n}: {msg}"))
        if errors:
            raise SmokeFailed(f"{name}: {errors}")
        service = sections.get("Service", {})
        argv = shlex.split(service["ExecStart"][0][1].lstrip("@-:+!"))
        self.args = [self.host(a) for a in argv[1:]]
        self.env = {}
        for _, value in service.get("Environment", []):
            self.env.update(a.split("=", 1) for a in shlex.split(value) if "=" in a)
        for _, value in service.get("EnvironmentFile", []):
            example = os.path.join(os.path.dirname(path), os.path.basename(value.lstrip("-")) + ".example")
            self.env.update(read_env_file(example))
        self.env = {k: self.host(v) for k, v in self.env.items()}
        for _, value in service.get("StateDirectory", []):
            for d in value.split():
                os.makedirs(self.host(f"/var/lib/{d}"), mode=0o750, exist_ok=True)
        self.cwd = self.host(service.get("WorkingDirectory", [(0, "/var/lib/switchyard")])[0][1])

    def host(self, value):
        for prefix in HOST_ROOTS:
            value = value.replace(prefix, self.base + prefix)
        return value

    def set(self, flag, value):
        """Overrides a setting: the flag leaves the arguments, its variable
        takes `value` (None: unset)."""
        args, skip = [], False
        for a in self.args:
            if skip:
                skip = False
            elif a == flag:
                skip = self.cli.flags.get(flag, False)
            elif not a.startswith(flag + "="):
                args.append(a)
        self.args = args
        var = self.cli.flag_env[flag]
        if value is None:
            self.env.pop(var, None)
        else:
            self.env[var] = value

    def settings(self):
        return Settings(self.cli, self.args, self.env)

    def place_certificates(self, certs):
        """Copies the dev-certs files to where the settings read them."""
        settings = self.settings()
        for flag in self.cli.file_flags():
            for file in settings.values(flag):
                os.makedirs(os.path.dirname(file), mode=0o750, exist_ok=True)
                if self.cli.value_names[flag] == "PATH":
                    continue  # written by the program
                source = CERT_SOURCES.get(os.path.basename(file))
                if source is None:
                    raise SmokeFailed(
                        f"{self.cli.name} {settings.named(flag)} {file}: the smoke test knows no "
                        f"dev-certs file for {os.path.basename(file)} (it knows {', '.join(CERT_SOURCES)})"
                    )
                with open(os.path.join(certs, source), "rb") as f:
                    content = f.read()
                if os.path.exists(file):
                    # Shared with the other program (the CA): rewriting it
                    # would make a running control plane reload it.
                    with open(file, "rb") as f:
                        if f.read() == content:
                            continue
                with open(file, "wb") as f:
                    f.write(content)
                os.chmod(file, 0o600)

    def start(self, log_path):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
        env.update(self.env)
        env["NO_COLOR"] = "1"
        log = open(log_path, "wb")
        try:
            return subprocess.Popen(
                [self.cli.path, *self.args], cwd=self.cwd, env=env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        finally:
            log.close()

    def refused(self, what, expected):
        """Starts it and expects a refusal naming `expected` within
        SMOKE_REFUSAL_S; returns the problem, or None."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
        env.update(self.env)
        env["NO_COLOR"] = "1"
        env.pop("RUST_BACKTRACE", None)
        try:
            out = subprocess.run(
                [self.cli.path, *self.args], cwd=self.cwd, env=env, stdin=subprocess.DEVNULL,
                capture_output=True, text=True, timeout=SMOKE_REFUSAL_S,
            )
        except subprocess.TimeoutExpired:
            return f"{self.cli.name} with {what} did not exit within {SMOKE_REFUSAL_S}s"
        if out.returncode == 0 or expected not in out.stderr:
            return f"{self.cli.name} with {what}: exit {out.returncode}, expected a refusal naming {expected}; stderr: {out.stderr.strip()[-500:]}"
        return None


def stop(proc):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def wait_status(proc, name, port, path, want, timeout_s):
    """Polls GET PATH until it answers `want`; fails when the process exits
    or time runs out, with the last answer."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            raise SmokeFailed(f"{name} exited with status {code} before GET {path} answered {want}")
        status, body = http_get(port, path)
        if status == want:
            return body
        last = f"{status}: {body.strip()[:200]}"
        time.sleep(0.1)
    raise SmokeFailed(f"{name}: GET {path} did not answer {want} within {timeout_s}s (last: {last})")


def smoke_test(root, clis, probes):
    """Starts switchyard-cp as deploy/systemd installs it (its unit and
    cp.env.example: mutual TLS, authentication, bootstrap token), on
    loopback ports with an SQLite store in a temporary directory and
    certificates from scripts/dev-certs; checks its probes; then starts
    switchyard-agent as installed (agent.env.example: https://, the node's
    certificate) against it and checks that it syncs and its probes. Also
    checks that both refuse a metrics port beyond loopback without
    --insecure-metrics. Returns the problems found."""
    base = tempfile.mkdtemp(prefix="check-deploy-smoke.")
    procs, logs = [], {}
    try:
        certs = os.path.join(base, "certs")
        out = subprocess.run(
            ["bash", os.path.join(root, "scripts", "dev-certs"), certs, "--node", SMOKE_NODE],
            capture_output=True, text=True, timeout=60,
        )
        if out.returncode != 0:
            raise SmokeFailed(f"scripts/dev-certs failed ({out.returncode}): {out.stderr.strip()}")

        cp = Unit(root, "switchyard-cp.service", clis["switchyard-cp"], base)
        grpc_port, cp_metrics = free_port(), free_port()
        cp.set("--listen", f"127.0.0.1:{grpc_port}")
        cp.set("--insecure-metrics", None)
        settings = cp.settings()
        for flag in ("--tls-cert", "--tls-key", "--client-ca", "--bootstrap-token-file"):
            if settings.value(flag) is None:
                raise SmokeFailed(f"deploy/systemd: switchyard-cp as installed sets no {settings.named(flag)}")
        cp.place_certificates(certs)
        token_file = settings.value("--bootstrap-token-file")

        cp.set("--metrics-listen", "0.0.0.0:0")
        problem = cp.refused("--metrics-listen 0.0.0.0:0", "--insecure-metrics")
        if problem:
            raise SmokeFailed(problem)
        cp.set("--metrics-listen", f"127.0.0.1:{cp_metrics}")

        logs["switchyard-cp"] = os.path.join(base, "cp.log")
        cp_proc = cp.start(logs["switchyard-cp"])
        procs.append(cp_proc)
        for path in ["/healthz", "/ready"] + sorted(p for b, p in probes if b == "switchyard-cp"):
            wait_status(cp_proc, "switchyard-cp", cp_metrics, path, 200, SMOKE_READY_S)
        print(f"check_deploy: smoke: switchyard-cp (mutual TLS on 127.0.0.1:{grpc_port}): /healthz 200, /ready 200")
        if not os.path.isfile(token_file):
            raise SmokeFailed(f"switchyard-cp wrote no bootstrap token to {token_file}")
        mode = stat.S_IMODE(os.stat(token_file).st_mode)
        if mode != 0o600:
            raise SmokeFailed(f"the bootstrap token file has mode {mode:o}, expected 600")

        agent = Unit(root, "switchyard-agent.service", clis["switchyard-agent"], base)
        urls = agent.settings().values("--control-plane")
        plain = [u for u in urls if not u.startswith("https://")]
        if plain or not urls:
            raise SmokeFailed(f"deploy/systemd: the agent as installed dials {urls}: every control plane must be https://")
        agent_metrics = free_port()
        url = f"https://localhost:{grpc_port}"
        agent.set("--control-plane", url)
        agent.set("--node-id", SMOKE_NODE)
        agent.set("--api-listen", "off")
        # Any free port: several checks may run on one machine.
        agent.set("--dns-listen", "127.0.0.1:0")
        agent.set("--proxy-threads", "1")
        agent.set("--insecure-metrics", None)
        settings = agent.settings()
        for flag in ("--ca-cert", "--tls-cert", "--tls-key"):
            if settings.value(flag) is None:
                raise SmokeFailed(f"deploy/systemd: switchyard-agent as installed sets no {settings.named(flag)}")
        agent.place_certificates(certs)

        agent.set("--metrics-listen", "0.0.0.0:0")
        problem = agent.refused("--metrics-listen 0.0.0.0:0", "--insecure-metrics")
        if problem:
            raise SmokeFailed(problem)
        agent.set("--metrics-listen", f"127.0.0.1:{agent_metrics}")

        logs["switchyard-agent"] = os.path.join(base, "agent.log")
        agent_proc = agent.start(logs["switchyard-agent"])
        procs.append(agent_proc)
        # A fresh data directory: /ready answers 200 only once the agent has
        # applied a configuration from the control plane.
        for path in ["/healthz", "/ready"] + sorted(p for b, p in probes if b == "switchyard-agent"):
            wait_status(agent_proc, "switchyard-agent", agent_metrics, path, 200, SMOKE_READY_S)
        _, metrics = http_get(agent_metrics, "/metrics")
        line = f'switchyard_agent_connected{{control_plane="{url}"}} 1'
        if line not in (metrics or "").splitlines():
            raise SmokeFailed(f"the agent's /metrics lacks {line!r}")
        _, metrics = http_get(cp_metrics, "/metrics")
        if "switchyard_cp_agents_connected 1" not in (metrics or "").splitlines():
            raise SmokeFailed("the control plane's /metrics does not count the agent (switchyard_cp_agents_connected 1)")
        print(f"check_deploy: smoke: switchyard-agent (node certificate of {SMOKE_NODE}, {url}): /healthz 200, /ready 200, synced")
        return []
    except SmokeFailed as e:
        problems = [str(e)]
    except (OSError, subprocess.SubprocessError, KeyError, ValueError) as e:
        problems = [f"{type(e).__name__}: {e}"]
    finally:
        for proc in reversed(procs):
            stop(proc)
    for name, log in logs.items():
        try:
            with open(log, encoding="utf-8", errors="replace") as f:
                text = f.read()[-8000:]
        except OSError:
            continue
        problems.append(f"---- {name} output ----\n{text}---- end of {name} output ----")
    shutil.rmtree(base, ignore_errors=True)
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=REPO_ROOT, help="repository root (default: this checkout)")
    parser.add_argument("--no-self-test", action="store_true", help="skip the planted-mistake self-test")
    parser.add_argument("--no-smoke", action="store_true", help="skip starting both programs as deploy/systemd does")
    args = parser.parse_args()
    root = os.path.abspath(args.root)
    # `timeout` stops this with SIGTERM: unwind, so that the programs the
    # smoke test started are stopped too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    clis = {}
    for name, var in BINARIES.items():
        path = os.environ.get(var) or os.path.join(REPO_ROOT, "target", "debug", name)
        clis[name] = load_cli(name, path)

    checker = Checker(root, clis)
    checker.run()
    flags = {(f, n) for f, k, n in checker.uses if k == "flag"}
    envs = {(f, n) for f, k, n in checker.uses if k == "env"}
    print(
        f"check_deploy: {len(checker.files)} files, {len(flags)} flag uses, "
        f"{len(envs)} variable uses checked against "
        + ", ".join(f"{n} ({len([f for f in c.flags if f.startswith('--')])} flags)" for n, c in clis.items())
    )
    if checker.errors:
        print(f"check_deploy: FAILED: {len(checker.errors)} problem(s) in deploy/:", file=sys.stderr)
        for e in checker.errors:
            print(f"  {e}", file=sys.stderr)
        return 1
    if not flags:
        print("check_deploy: FAILED: no flag of either binary found under deploy/", file=sys.stderr)
        return 1

    if not args.no_self_test:
        count, missed = self_test(root, clis, checker.uses, checker.mount_uses, checker.secret_key_uses)
        if missed:
            print(f"check_deploy: FAILED: self-test: {len(missed)} of {count} planted mistakes went unnoticed:", file=sys.stderr)
            for m in missed:
                print(f"  {m}", file=sys.stderr)
            return 1
        print(f"check_deploy: self-test: all {count} planted mistakes reported")
    if not args.no_smoke:
        problems = smoke_test(root, clis, checker.probes)
        if problems:
            print("check_deploy: FAILED: smoke test:", file=sys.stderr)
            for p in problems:
                print(f"  {p}", file=sys.stderr)
            return 1
    print("check_deploy: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
