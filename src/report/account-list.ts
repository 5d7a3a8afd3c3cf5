import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import { cellWidth, type Row } from './tables';

/**
 * Every affected account of a run (`--accounts`), kept on disk instead of in memory: a run over a
 * million customers lists hundreds of thousands, and memory must stay flat. Rows are appended page
 * by page as JSON lines in a private temporary file and read back once, into the report.
 */
export class AccountList {
  count = 0;
  /** The widest cell of each column so far, so a text table can be aligned while streamed. */
  readonly widths: number[];
  private dir: string | null = null;
  private fd: number | null = null;

  constructor(readonly columns: string[]) {
    this.widths = columns.map(() => 0);
  }

  add(rows: Row[]): void {
    if (rows.length === 0) return;
    if (this.fd === null) {
      this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'suspend-accounts-'));
      this.fd = fs.openSync(path.join(this.dir, 'accounts.jsonl'), 'w+', 0o600);
    }
    let text = '';
    for (const r of rows) {
      const values = this.columns.map((c) => r[c] ?? null);
      values.forEach((v, i) => {
        this.widths[i] = Math.max(this.widths[i] ?? 0, cellWidth(v));
      });
      text += `${JSON.stringify(values)}\n`;
    }
    fs.writeSync(this.fd, text);
    this.count += rows.length;
  }

  /** The rows in the order they were added, about a megabyte at a time. */
  *batches(): Generator<Row[]> {
    if (this.fd === null) return;
    const buffer = Buffer.alloc(1 << 20);
    const decoder = new StringDecoder('utf8');
    let position = 0;
    let rest = '';
    for (;;) {
      const n = fs.readSync(this.fd, buffer, 0, buffer.length, position);
      if (n === 0) break;
      position += n;
      const lines = (rest + decoder.write(buffer.subarray(0, n))).split('\n');
      rest = lines.pop() ?? '';
      yield lines.map((line) => this.toRow(line));
    }
    if (rest) yield [this.toRow(rest)];
  }

  /** Removes the temporary file. */
  dispose(): void {
    if (this.fd !== null) fs.closeSync(this.fd);
    if (this.dir !== null) fs.rmSync(this.dir, { recursive: true, force: true });
    this.fd = null;
    this.dir = null;
  }

  private toRow(line: string): Row {
    const values = JSON.parse(line) as (string | number | null)[];
    return Object.fromEntries(this.columns.map((c, i) => [c, values[i] ?? null]));
  }
}
