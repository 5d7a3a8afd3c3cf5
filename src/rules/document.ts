import {
  isAlias,
  isMap,
  isPair,
  isScalar,
  isSeq,
  LineCounter,
  parseDocument,
  visit,
  type Document,
  type Node,
  type ParsedNode,
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
  /** Whether the file writes something (a scalar, a map, a list) at `path`. */
  writes(path: YamlPath): boolean;
}

export type ParsedYaml =
  { ok: true; document: RulesDocument } | { ok: false; errors: { line: number; message: string }[] };

/**
 * Parses YAML text. `root` selects a sub-tree (the `suspend` key of package.json); paths are then
 * relative to it. Syntax errors come back with their lines, nothing is thrown.
 */
export function parseRulesYaml(text: string, root: YamlPath = []): ParsedYaml {
  const lineCounter = new LineCounter();
  // Keys are compared as the data has them, text: `2:` and `'2':` name the same organization, and
  // the second would silently replace the first.
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: sameKey });
  if (doc.errors.length > 0) {
    // A tab used to indent throws off every line after it: its own errors say what to fix.
    const tabs = doc.errors.filter((e) => e.code === 'TAB_AS_INDENT');
    return {
      ok: false,
      errors: (tabs.length > 0 ? tabs : doc.errors).map((e) => ({
        line: lineCounter.linePos(e.pos[0]).line,
        message:
          e.code === 'TAB_AS_INDENT'
            ? 'a tab indents this line; YAML indents with spaces only'
            : e.code === 'DUPLICATE_KEY'
              ? `the key ${keyAt(text, e.pos[0])} is written twice in one map (as the same text); keep one, since the second would replace the first`
              : firstLine(e.message),
      })),
    };
  }
  const line = (offset: number | undefined) => (offset === undefined ? 1 : lineCounter.linePos(offset).line);
  const aliasErrors = checkAliases(doc, line);
  if (aliasErrors.length > 0) return { ok: false, errors: aliasErrors };
  let data: unknown;
  try {
    data = doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT });
  } catch {
    // The aliases are all resolvable and acyclic (checked above): what is left is their expansion.
    return {
      ok: false,
      errors: [
        {
          line: firstAliasLine(doc, line),
          message: `the aliases expand into too many values (a node may be referenced at most ${MAX_ALIAS_COUNT} times); write the values out`,
        },
      ],
    };
  }
  const odd = nonPlainValue(data, []);
  if (odd) {
    return {
      ok: false,
      errors: [
        {
          line: line(find(doc, odd.path).node?.range?.[0]),
          message: `a ${odd.kind} (from a YAML tag such as !!binary or !!set) cannot be used in a rules file; write text, a number, true/false, a list or a map`,
        },
      ],
    };
  }
  const locate = (path: YamlPath) => find(doc, [...root, ...path]);
  return {
    ok: true,
    document: {
      data: subTree(data, root),
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
      writes(path) {
        return locate(path).complete;
      },
    },
  };
}

/** How many times one anchored node may be referenced: a guard against alias "bombs". */
const MAX_ALIAS_COUNT = 1000;

/** Aliases that name no earlier anchor, or that point at a node containing them (a cycle). */
function checkAliases(
  doc: Document,
  line: (offset: number | undefined) => number,
): { line: number; message: string }[] {
  const errors: { line: number; message: string }[] = [];
  visit(doc, {
    Alias(_key, node, path) {
      const target = node.resolve(doc);
      const name = node.source;
      if (!target) {
        errors.push({
          line: line(node.range?.[0]),
          message: `alias *${name} has no anchor &${name} before it`,
        });
      } else if (path.includes(target as never)) {
        errors.push({
          line: line(node.range?.[0]),
          message: `alias *${name} refers to a node that contains it, which would never end`,
        });
      }
    },
  });
  return errors;
}

/** The first value that is not plain JSON data (YAML tags can make a Buffer, a Set, a Map, a Date). */
function nonPlainValue(value: unknown, path: YamlPath): { path: YamlPath; kind: string } | null {
  if (value === null || ['string', 'number', 'boolean'].includes(typeof value)) return null;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const found = nonPlainValue(value[i], [...path, i]);
      if (found) return found;
    }
    return null;
  }
  if (typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype) {
    for (const [k, v] of Object.entries(value)) {
      const found = nonPlainValue(v, [...path, k]);
      if (found) return found;
    }
    return null;
  }
  const kind = (value as object)?.constructor?.name ?? typeof value;
  return { path, kind: kind === 'Uint8Array' || kind === 'Buffer' ? 'binary value' : `${kind} value` };
}

function firstAliasLine(doc: Document, line: (offset: number | undefined) => number): number {
  let found = 1;
  visit(doc, {
    Alias(_key, node) {
      found = line(node.range?.[0]);
      return visit.BREAK;
    },
  });
  return found;
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

/** Two map keys that become the same key of the parsed data (scalars by their text). */
function sameKey(a: ParsedNode, b: ParsedNode): boolean {
  if (a === b) return true;
  if (isScalar(a) && isScalar(b)) return String(a.value) === String(b.value);
  return false;
}

/** The key written at `offset` as the file writes it (`'2'`, `p`), for a message about it. */
function keyAt(text: string, offset: number): string {
  return (/^('[^'\n]*'|"[^"\n]*"|[^:\n]*)/.exec(text.slice(offset))?.[0] ?? '').trim();
}
