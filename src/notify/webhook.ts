import { createHmac } from 'node:crypto';
import type { OutboxPayload } from '../types';
import { errorMessage } from '../errors';

/**
 * Webhook delivery: POST JSON to the organization's URL, one event per request or a batch. The
 * receiver verifies `Suspend-Signature: t=<unix seconds>,v1=<hex>`, the HMAC-SHA256 with the shared
 * secret of `${t}.${body}`, rejects old timestamps, and de-duplicates by event id (also sent as
 * `Idempotency-Key`): delivery is at least once.
 */

export interface WebhookEvent extends OutboxPayload {
  /** The outbox id: the same on every retry. */
  id: string;
  createdAt: string;
}

export const SIGNATURE_HEADER = 'Suspend-Signature';

export function signature(secret: string, timestamp: number, body: string): string {
  return createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex');
}

/** The request suspend sends: body and headers, without the clock or the network. */
export function webhookRequest(
  events: WebhookEvent[],
  options: { batch: boolean; secret: string | undefined; timestamp: number; userAgent: string },
): { body: string; headers: Record<string, string> } {
  const body = JSON.stringify(options.batch ? { events } : events[0]);
  const headers: Record<string, string> = {
    'Content-Type': 'application/json',
    'User-Agent': options.userAgent,
    'Idempotency-Key': events.map((e) => e.id).join(','),
  };
  if (options.secret) {
    headers[SIGNATURE_HEADER] =
      `t=${options.timestamp},v1=${signature(options.secret, options.timestamp, body)}`;
  }
  return { body, headers };
}

/** The URL for messages: no credentials, no query (tokens live there). */
export function describeWebhookUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}${u.pathname}`;
  } catch {
    return 'the webhook URL';
  }
}

/**
 * Sends one request; resolves on a 2xx answer, otherwise throws one sentence (status, timeout or
 * network error). Redirects are not followed: a POST must reach the configured URL.
 */
export async function postWebhook(
  url: string,
  request: { body: string; headers: Record<string, string> },
  timeoutMs: number,
): Promise<void> {
  let response: Response;
  try {
    response = await fetch(url, {
      method: 'POST',
      body: request.body,
      headers: request.headers,
      redirect: 'manual',
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (err) {
    const name = (err as { name?: string } | null)?.name;
    if (name === 'TimeoutError' || name === 'AbortError') {
      throw new Error(`webhook ${describeWebhookUrl(url)}: no answer within ${timeoutMs} ms`, { cause: err });
    }
    const cause = (err as { cause?: unknown }).cause;
    throw new Error(`webhook ${describeWebhookUrl(url)}: ${errorMessage(cause ?? err)}`, { cause: err });
  }
  // Read the body so the connection is released.
  await response.arrayBuffer().catch(() => undefined);
  if (response.status < 200 || response.status > 299) {
    throw new Error(`webhook ${describeWebhookUrl(url)}: HTTP ${response.status}`);
  }
}
