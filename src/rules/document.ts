import {
  isAlias,
  isMap,
  isPair,
  isScalar,
  isSeq,
  LineCounter,
  parseDocument,
  type Document,
  type Node,
} from 'yaml';
import type { YamlPath } from './problems';

/**
 * A parsed rules file that still knows where everything came from: the plain data to validate, the
 * line of any path (for error messages) and the source text of a scalar (money is read from the
 * digits the user wrote, never from a float).
 */
export interface RulesDocument {
  data: unknown;
  /** 1-based line of the value at `path` (or of its key), or of the closest enclosing node that exists. */
  lineOf(path: YamlPath, atKey?: boolean): number;
  /** The scalar at `path` exactly as written (`19.99`, `0012`), or null. */
  sourceOf(path: YamlPath): string | null;
}

export type ParsedYaml =
  { ok: true; document: RulesDocument } | { ok: false; errors: { line: number; message: string }[] };

/**
 * Parses YAML text. `root` selects a sub-tree (the `suspend` key of package.json); paths are then
 * relative to it. Syntax errors come back with their lines, nothing is thrown.
 */
export function parseRulesYaml(text: string, root: YamlPath = []): ParsedYaml {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    return {
      ok: false,
      errors: doc.errors.map((e) => ({
        line: lineCounter.linePos(e.pos[0]).line,
        message: firstLine(e.message),
      })),
    };
  }
  const line = (offset: number | undefined) => (offset === undefined ? 1 : lineCounter.linePos(offset).line);
  const locate = (path: YamlPath) => find(doc, [...root, ...path]);
  return {
    ok: true,
    document: {
      data: subTree(doc.toJS({ maxAliasCount: 1000 }), root),
      lineOf(path, atKey = false) {
        const found = locate(path);
        const node = atKey && found.complete && found.key ? found.key : found.node;
        return line(node?.range?.[0]);
      },
      sourceOf(path) {
        const found = locate(path);
        return found.complete && isScalar(found.node) && typeof found.node.source === 'string'
          ? found.node.source
          : null;
      },
    },
  };
}

function subTree(data: unknown, root: YamlPath): unknown {
  let node = data;
  for (const segment of root) {
    node = node !== null && typeof node === 'object' ? (node as Record<string, unknown>)[segment] : undefined;
  }
  return node;
}

function firstLine(message: string): string {
  return (message.split('\n')[0] ?? message).replace(/ at line \d+, column \d+:?$/, '');
}

interface Found {
  node: Node | null;
  key: Node | null;
  /** Whether the whole path exists (else `node` is the deepest ancestor found). */
  complete: boolean;
}

/** Walks map keys (compared as text, so `3:` and `"3":` match) and list indexes, through aliases. */
function find(doc: Document, path: YamlPath): Found {
  let node = doc.contents as Node | null;
  let key: Node | null = null;
  for (const segment of path) {
    while (node && isAlias(node)) node = (node.resolve(doc) as Node | undefined) ?? null;
    if (isMap(node)) {
      const pair = node.items.find((p) => isPair(p) && keyText(p.key) === String(segment));
      if (!pair) return { node, key, complete: false };
      key = pair.key as Node;
      node = (pair.value as Node | null) ?? (pair.key as Node);
    } else if (isSeq(node) && typeof segment === 'number' && node.items[segment]) {
      key = null;
      node = node.items[segment] as Node;
    } else {
      return { node, key, complete: false };
    }
  }
  while (node && isAlias(node)) node = (node.resolve(doc) as Node | undefined) ?? null;
  return { node, key, complete: true };
}

function keyText(key: unknown): string {
  return isScalar(key) ? String(key.value) : String(key);
}
