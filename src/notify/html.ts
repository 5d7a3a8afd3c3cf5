/** HTML for notification mail: every value that reaches markup goes through `escapeHtml`. */

const ENTITIES: Record<string, string> = {
  '&': '&amp;',
  '<': '&lt;',
  '>': '&gt;',
  '"': '&quot;',
  "'": '&#39;',
};

/** Escapes text for an HTML element or a quoted attribute (customer names come from the host). */
export function escapeHtml(value: string | number | null | undefined): string {
  if (value === null || value === undefined) return '';
  return String(value).replace(/[&<>"']/g, (c) => ENTITIES[c] ?? c);
}

const CELL = 'border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top';

/** A table of plain-text cells, each escaped. */
export function htmlTable(columns: string[], rows: (string | number | null)[][]): string {
  const head = columns.map((c) => `<th style="${CELL};background:#f5f5f5">${escapeHtml(c)}</th>`).join('');
  const body = rows
    .map((r) => `<tr>${r.map((v) => `<td style="${CELL}">${escapeHtml(v)}</td>`).join('')}</tr>`)
    .join('\n');
  return `<table style="border-collapse:collapse;font-size:14px">\n<tr>${head}</tr>\n${body}\n</table>`;
}

/** A document around already-escaped body markup. */
export function htmlDocument(title: string, body: string): string {
  return [
    '<!doctype html>',
    `<html><head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head>`,
    `<body style="font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;font-size:15px;color:#222">`,
    body,
    '</body></html>',
  ].join('\n');
}

/** Inline `code` spans in an escaped sentence: `a` becomes <code>a</code>. */
export function htmlText(sentence: string): string {
  return escapeHtml(sentence).replace(/`([^`]+)`/g, '<code>$1</code>');
}
