import type { AddressInfo } from 'node:net';
import { SMTPServer } from 'smtp-server';

/** A message as the SMTP server received it: its envelope recipients and raw MIME text. */
export interface ReceivedMail {
  rcptTo: string[];
  raw: string;
}

export interface LoopbackSmtp {
  /** `smtp://127.0.0.1:PORT`, for SMTP_URL. */
  url: string;
  /** Every message received so far, in order. */
  mails: ReceivedMail[];
  /** SMTP connections opened so far. */
  connections: { count: number };
  /** Recipients the server refuses (550), as a server refuses an unknown mailbox; the others get the mail. */
  refuse: Set<string>;
  close(): Promise<void>;
}

/** A real SMTP server on loopback (no auth, no TLS) that keeps every message it receives. */
export async function startSmtp(): Promise<LoopbackSmtp> {
  const mails: ReceivedMail[] = [];
  const connections = { count: 0 };
  const refuse = new Set<string>();
  const server = new SMTPServer({
    authOptional: true,
    disabledCommands: ['AUTH', 'STARTTLS'],
    logger: false,
    onConnect(_session, callback) {
      connections.count += 1;
      callback();
    },
    onRcptTo(address, _session, callback) {
      if (!refuse.has(address.address)) return callback();
      const refused = Object.assign(new Error('No such mailbox'), { responseCode: 550 });
      callback(refused);
    },
    onData(stream, session, callback) {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        mails.push({
          rcptTo: session.envelope.rcptTo.map((a) => a.address),
          raw: Buffer.concat(chunks).toString('utf8'),
        });
        callback();
      });
    },
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.server.address() as AddressInfo).port;
  return {
    url: `smtp://127.0.0.1:${port}`,
    mails,
    connections,
    refuse,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
