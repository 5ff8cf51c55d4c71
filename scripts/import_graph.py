#!/usr/bin/env python3
"""For each folder of Sources/RabbitMQ, the folders whose types its code mentions (comments and strings stripped).

usage: scripts/import_graph.py [--check] [Sources/RabbitMQ]

With --check it also fails (exit 1) on an edge that points the wrong way between the layers below, from low to
high: Errors < Support, Values < Handoff < Engine < the public folders (Channels, Consuming, Publishing, Topology,
Redelivery, RequestReply, Outbox, Observability, Recovery, Client). A folder of a lower layer may name only folders of layers below its
own; the public folders may name each other (their cycles are printed, to keep few). A folder missing from the
layers fails the check too, so that a new folder gets a place."""
import collections
import os
import re
import sys

LAYERS = [['Errors'], ['Support', 'Values'], ['Handoff'], ['Engine'],
          ['Channels', 'Consuming', 'Publishing', 'Topology', 'Redelivery', 'RequestReply', 'Outbox',
           'Observability', 'Recovery', 'Client']]
PUBLIC = len(LAYERS) - 1
LAYER = {folder: index for index, folders in enumerate(LAYERS) for folder in folders}

args = [a for a in sys.argv[1:] if a != '--check']
check = '--check' in sys.argv[1:]
root = args[0] if args else 'Sources/RabbitMQ'
decl = re.compile(r'^(?:public |internal |private |fileprivate |final |indirect )*'
                  r'(?:class|struct|enum|protocol|actor|typealias)\s+([A-Z]\w*)', re.M)


def code(path):
    text = open(path).read()
    text = re.sub(r'/\*.*?\*/', '', text, flags=re.S)
    text = re.sub(r'//.*', '', text)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


owner = {}
files = collections.defaultdict(list)
for folder in sorted(f for f in os.listdir(root) if not f.endswith('.docc')):
    for name in sorted(os.listdir(os.path.join(root, folder))):
        path = os.path.join(root, folder, name)
        files[folder].append(path)
        for match in decl.finditer(code(path)):
            owner.setdefault(match.group(1), folder)
graph = {}
for folder in sorted(files):
    uses = collections.defaultdict(set)
    for path in files[folder]:
        for word in set(re.findall(r'\b[A-Z]\w*\b', code(path))):
            other = owner.get(word)
            if other and other != folder:
                uses[other].add(word)
    graph[folder] = uses
    print(f"{folder} -> " + "; ".join(f"{o}: {', '.join(sorted(t))}" for o, t in sorted(uses.items())))

if not check:
    sys.exit(0)
violations = []
for folder, uses in graph.items():
    if folder not in LAYER:
        violations.append(f"{folder} is in no layer: add it to LAYERS in {sys.argv[0]}")
        continue
    for other, types in sorted(uses.items()):
        if other not in LAYER:
            continue
        if LAYER[folder] < PUBLIC and LAYER[other] >= LAYER[folder]:
            violations.append(f"{folder} (layer {LAYER[folder]}) names {other} (layer {LAYER[other]}): "
                              f"{', '.join(sorted(types))}")
cycles = sorted({tuple(sorted((a, b))) for a, uses in graph.items() for b in uses
                 if a in graph.get(b, {}) and LAYER.get(a) == PUBLIC and LAYER.get(b) == PUBLIC})
print("layers: " + " < ".join(", ".join(folders) for folders in LAYERS))
print("two-way edges among the public folders: " + (", ".join(f"{a} <-> {b}" for a, b in cycles) or "none"))
for violation in violations:
    print(f"error: {violation}", file=sys.stderr)
sys.exit(1 if violations else 0)
