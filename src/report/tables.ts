/** Small renderers for the four report formats. Cells are plain strings; callers format numbers. */

export type Row = Record<string, string | number | null>;

export function renderTable(columns: string[], rows: Row[]): string {
  const cell = (v: string | number | null | undefined) => (v === null || v === undefined ? '' : String(v));
  const widths = columns.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (values: string[]) =>
    values
      .map((v, i) => v.padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd();
  return [
    line(columns),
    line(widths.map((w) => '-'.repeat(w))),
    ...rows.map((r) => line(columns.map((c) => cell(r[c])))),
  ].join('\n');
}

export function renderMarkdown(columns: string[], rows: Row[]): string {
  const esc = (v: string | number | null | undefined) =>
    v === null || v === undefined ? '' : String(v).replace(/\|/g, '\\|').replace(/\r?\n/g, ' ');
  return [
    `| ${columns.join(' | ')} |`,
    `| ${columns.map(() => '---').join(' | ')} |`,
    ...rows.map((r) => `| ${columns.map((c) => esc(r[c])).join(' | ')} |`),
  ].join('\n');
}

/** RFC 4180: quote cells with commas, quotes or line breaks; double inner quotes. */
export function csvCell(v: string | number | null | undefined): string {
  if (v === null || v === undefined) return '';
  const s = String(v);
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

export function renderCsv(columns: string[], rows: Row[]): string {
  return [columns.join(','), ...rows.map((r) => columns.map((c) => csvCell(r[c])).join(','))].join('\n');
}

export function formatCount(n: number): string {
  return n.toLocaleString('en-US');
}
