#!/usr/bin/env python3
"""For each folder of Sources/RabbitMQ, the folders whose types its code mentions (comments and strings stripped).
usage: scripts/import_graph.py [Sources/RabbitMQ]"""
import os, re, sys, collections
root = sys.argv[1] if len(sys.argv) > 1 else 'Sources/RabbitMQ'
decl = re.compile(r'^(?:public |internal |private |fileprivate |final |indirect )*(?:class|struct|enum|protocol|actor|typealias)\s+([A-Z]\w*)', re.M)
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
for folder in sorted(files):
    uses = collections.defaultdict(set)
    for path in files[folder]:
        for word in set(re.findall(r'\b[A-Z]\w*\b', code(path))):
            other = owner.get(word)
            if other and other != folder:
                uses[other].add(word)
    print(f"{folder} -> " + "; ".join(f"{o}: {', '.join(sorted(t))}" for o, t in sorted(uses.items())))
