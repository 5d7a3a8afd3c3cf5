export default async function globalTeardown(): Promise<void> {
  const server = (globalThis as { __suspendEmbedded?: { stop(): Promise<void> } }).__suspendEmbedded;
  if (server) await server.stop();
}
