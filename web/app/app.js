// The Yanzi web chat page. Plain ES module on top of the JS SDK (web/src, mapped to the bare
// specifier "yanzi" by the import map in index.html). Every body is encrypted and decrypted by
// the SDK in this browser; the node only ever sees ciphertext. Text from other people is put in
// the page with textContent only, never as HTML.

import { Client, BrowserTransport, localStorageAdapter } from 'yanzi';

const REACTIONS = ['👍', '❤️', '😂', '🎉'];
const PAGE = 30; // messages per history page
const TYPING_REFRESH_MS = 3000; // re-announce typing at most this often (protocol.md §4.3)
const TYPING_IDLE_MS = 4000; // stop typing after this long without a keystroke
const TYPING_EXPIRE_MS = 6000; // hide someone's indicator without a refresh (no server expiry)

const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('aria-') || key === 'role') node.setAttribute(key, value);
    else node[key] = value;
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
};

const ui = {
  client: null,
  me: null,
  current: null, // the open conversation id
  convs: new Map(), // conv id -> the SDK's conversation row {conv, type, title, members, unread, …}
  more: new Map(), // conv id -> older messages exist (the last history page said so)
  oldest: new Map(), // conv id -> op id of the oldest message shown (the paging window)
  marked: new Map(), // conv id -> op id we last marked read
  online: new Set(), // users the node told us are online (there is no snapshot: protocol §4.5)
  editing: null, // op id of the message being edited
  typingPeers: new Map(), // conv -> Map(user -> timer)
  typingSent: 0,
  typingStop: null,
  renderQueued: false,
  loadingOlder: false,
};
const OPEN_KEY = 'yanzi-page:open'; // the conversation to reopen after a reload

// -- start-up -------------------------------------------------------------------------------

function newClient() {
  return new Client({
    baseUrl: location.origin,
    storage: localStorageAdapter(window.localStorage),
    // fetch bound to window: the transport calls it as a method, and a browser's fetch refuses
    // any `this` but the window ("Illegal invocation").
    transport: new BrowserTransport({ fetch: (...args) => window.fetch(...args) }),
    e2ee: true,
  });
}

async function start() {
  ui.client = newClient();
  wireClient(ui.client);
  // A stored session (token, device keys, cursor, chain keys) resumes without a password:
  // connect() reads the SDK's storage first and refuses with not_logged_in when it holds none.
  await enterChat().catch((err) => {
    if (err?.code === 'not_logged_in') showAuth();
    else if (SESSION_GONE.has(err?.code)) showAuth(`Please log in again (${describe(err)}).`);
    else throw err;
  });
}

const SESSION_GONE = new Set(['not_logged_in', 'auth_failed', 'token_expired', 'auth_required', 'logged_out']);

function wireClient(client) {
  client.on('state', onState);
  client.on('caughtUp', () => {
    if (ui.me) afterCatchUp().catch(quiet); // after every reconnect: the list may have moved
  });
  client.on('message', (ev) => onConversationChanged(ev.conv));
  client.on('op', (ev) => {
    // New conversations and membership changes: the list (titles, members) may change.
    if (['create', 'member_add', 'member_remove', 'settings'].includes(ev.op.content.kind)) {
      onConversationChanged(ev.conv);
    }
  });
  client.on('presence', (ev) => {
    if (ev.online) ui.online.add(ev.user);
    else ui.online.delete(ev.user);
    renderHeader();
  });
  client.on('error', (err) => {
    // Background failures (a catch-up, a key fetch) are retried by the SDK; a dead session is
    // not, so send the person back to the login form.
    if (SESSION_GONE.has(err?.code)) {
      showAuth(`Please log in again (${describe(err)}).`);
    } else {
      console.warn('yanzi:', err);
    }
  });
  client.on('typing', onTyping);
  client.on('read', (ev) => {
    if (ev.user === ui.me) onConversationChanged(ev.conv);
  });
  client.on('keyChanged', (ev) => onDeviceNews(ev, true));
  client.on('deviceAdded', (ev) => onDeviceNews(ev, false));
}

function showAuth(message = '') {
  ui.me = null;
  $('boot').hidden = true;
  $('chat-view').hidden = true;
  $('auth-view').hidden = false;
  $('banner').hidden = true;
  $('auth-error').textContent = message;
  $('auth-user').focus();
}

/** Connect (and catch up), then show the chat. */
async function enterChat() {
  try {
    await ui.client.connect();
  } catch (err) {
    if (SESSION_GONE.has(err?.code) || !ui.client.user) throw err;
    // The node is unreachable right now: show the chat with the banner and let the SDK retry
    // with backoff (onShow is its connect-and-keep-trying entry point); caughtUp takes over.
    showChat();
    $('banner').hidden = false;
    ui.client.onShow();
    return;
  }
  showChat();
  await afterCatchUp();
}

function showChat() {
  ui.me = ui.client.user;
  $('me').textContent = ui.me;
  $('boot').hidden = true;
  $('auth-view').hidden = true;
  $('chat-view').hidden = false;
}

async function afterCatchUp() {
  await refreshConversations();
  const reopen = window.localStorage.getItem(OPEN_KEY);
  if (!ui.current && reopen && ui.convs.has(reopen)) await openConversation(reopen);
}

$('auth-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const action = event.submitter?.value ?? 'login';
  const username = $('auth-user').value.trim().toLowerCase();
  const password = $('auth-password').value;
  const error = $('auth-error');
  error.textContent = '';
  setBusy($('auth-form'), true);
  try {
    if (action === 'register') await ui.client.register(username, password);
    await ui.client.login(username, password);
    $('auth-password').value = '';
    await enterChat();
  } catch (err) {
    error.textContent = describe(err);
  } finally {
    setBusy($('auth-form'), false);
  }
});

$('logout').addEventListener('click', async () => {
  await ui.client.logout().catch(() => {});
  // This browser forgets the account: device keys, chain keys, cursor. Logging in again makes
  // a new device, which the other side sees as added (and its safety number changes).
  window.localStorage.clear();
  location.reload();
});

// -- connection state -----------------------------------------------------------------------

function onState(ev) {
  // Not connected while signed in: the SDK is reconnecting (or gave up after a fatal close, in
  // which case its error event sends the person to the login form).
  $('banner').hidden = ev.connected || !ui.me;
}

// -- conversation list ----------------------------------------------------------------------

async function refreshConversations() {
  const list = await ui.client.conversations();
  ui.convs = new Map(list.map((c) => [c.conv, c]));
  renderConversationList();
  if (ui.current && ui.convs.has(ui.current)) renderHeader();
}

function convTitle(c) {
  return c ? c.title || c.conv : '';
}

function peerOf(c) {
  return c.type === 'direct' ? c.members.find((u) => u !== ui.me) ?? null : null;
}

function renderConversationList() {
  const list = $('conv-list');
  const items = [...ui.convs.values()].map((c) => {
    const unread = c.conv === ui.current ? 0 : c.unread ?? 0;
    const last = c.lastMessage;
    const preview = last ? `${last.author === ui.me ? 'you' : last.author}: ${messageText(last)}` : 'no messages yet';
    const label = unread ? `${convTitle(c)}, ${unread} unread` : convTitle(c);
    const button = el(
      'button',
      { type: 'button', dataset: { conv: c.conv }, 'aria-label': label },
      el('span', {}, el('strong', { textContent: convTitle(c) }), el('span', { className: 'preview', textContent: preview })),
      unread ? el('span', { className: 'unread', textContent: String(unread) }) : null,
    );
    if (c.conv === ui.current) button.setAttribute('aria-current', 'true');
    button.addEventListener('click', () => openConversation(c.conv));
    return el('li', {}, button);
  });
  list.replaceChildren(...items);
}

$('new-direct').addEventListener('submit', async (event) => {
  event.preventDefault();
  const input = $('new-direct-user');
  const peer = input.value.trim().toLowerCase();
  $('new-direct-error').textContent = '';
  if (!peer) return;
  try {
    const conv = await ui.client.direct(peer);
    input.value = '';
    await refreshConversations();
    await openConversation(conv);
  } catch (err) {
    $('new-direct-error').textContent = describe(err);
  }
});

// -- one conversation -----------------------------------------------------------------------

async function openConversation(conv) {
  ui.current = conv;
  window.localStorage.setItem(OPEN_KEY, conv);
  ui.editing = null;
  $('editing').hidden = true;
  $('safety-panel').hidden = true;
  $('safety-toggle').setAttribute('aria-expanded', 'false');
  $('composer').hidden = false;
  renderHeader();
  renderConversationList();
  renderMessages({ stickToBottom: true });
  renderTyping();
  if (!ui.oldest.has(conv)) await loadOlder(); // the first page
  renderMessages({ stickToBottom: true });
  markRead();
  $('composer-text').focus();
}

function renderHeader() {
  if (!ui.current) return;
  const c = ui.convs.get(ui.current);
  $('conv-title').textContent = c ? convTitle(c) : ui.current;
  const peer = c && peerOf(c);
  $('presence').textContent = peer && ui.online.has(peer) ? 'online' : '';
  $('safety-toggle').hidden = !peer;
}

function messageText(m) {
  if (m.deleted) return 'message deleted';
  if (typeof m.text === 'string') return m.text;
  return m.error ? `cannot decrypt this message (${m.error})` : 'waiting for the key to decrypt this message…';
}

function renderMessages({ stickToBottom = false } = {}) {
  if (!ui.current) return;
  const scroller = $('scroller');
  const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
  const all = ui.client.messages(ui.current);
  // The paging window: from the oldest message a history page returned, to the newest.
  const oldest = ui.oldest.get(ui.current);
  const from = oldest ? Math.max(0, all.findIndex((m) => m.opId === oldest)) : Math.max(0, all.length - PAGE);
  $('messages').replaceChildren(...all.slice(from).map(renderMessage));
  $('load-older').hidden = ui.more.get(ui.current) !== true;
  if (stickToBottom || atBottom) scroller.scrollTop = scroller.scrollHeight;
}

function renderMessage(m) {
  const opId = m.opId;
  const mine = m.author === ui.me;
  const deleted = m.deleted;
  const edited = m.edited;
  const item = el('li', {
    className: ['msg', mine ? 'mine' : '', deleted ? 'deleted' : '', m.pending ? 'pending' : ''].join(' ').trim(),
    dataset: { opId, author: m.author },
  });
  const meta = el(
    'div',
    { className: 'meta' },
    el('span', { className: 'author', textContent: mine ? 'you' : m.author }),
    el('time', { textContent: timeOf(m) }),
    edited && !deleted ? el('span', { className: 'edited', textContent: 'edited' }) : null,
    // Shown only once the text is there: verification runs just before decryption.
    !m.pending && !m.verified ? el('span', { className: 'unverified', textContent: 'unverified' }) : null,
  );
  item.append(meta, el('p', { className: 'text', textContent: messageText(m) }));
  if (!deleted) {
    item.append(renderReactions(m, opId));
    const actions = el('div', { className: 'actions' });
    for (const key of REACTIONS) {
      const mineOn = reactionUsers(m, key).includes(ui.me);
      if (!mineOn) actions.append(actionButton(`React ${key}`, key, () => react(opId, key)));
    }
    if (mine) {
      actions.append(actionButton('Edit message', 'Edit', () => startEdit(m, opId)));
      actions.append(actionButton('Delete message', 'Delete', () => deleteMessage(opId)));
    }
    item.append(actions);
  }
  return item;
}

function actionButton(label, text, onClick) {
  const button = el('button', { type: 'button', className: 'link', textContent: text, 'aria-label': label });
  button.addEventListener('click', () => onClick().catch(report));
  return button;
}

function reactionUsers(m, key) {
  return m.reactions?.[key] ?? [];
}

function renderReactions(m, opId) {
  const box = el('div', { className: 'reactions' });
  for (const key of Object.keys(m.reactions ?? {})) {
    const users = reactionUsers(m, key);
    if (!users.length) continue;
    const pressed = users.includes(ui.me);
    const button = el('button', {
      type: 'button',
      textContent: `${key} ${users.length}`,
      title: users.join(', '),
      'aria-pressed': String(pressed),
      'aria-label': `${key} from ${users.join(', ')}${pressed ? ' (click to remove yours)' : ''}`,
    });
    button.addEventListener('click', () =>
      (pressed ? ui.client.unreact(ui.current, opId, key) : react(opId, key)).catch(report),
    );
    box.append(button);
  }
  return box;
}

function timeOf(m) {
  const ms = m.hlc?.[0]; // HLC l: the accepting node's wall clock in ms (protocol §5.1)
  if (!ms) return '';
  return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

async function react(opId, key) {
  await ui.client.react(ui.current, opId, key);
}

async function deleteMessage(opId) {
  if (!window.confirm('Delete this message for everyone?')) return;
  await ui.client.delete(ui.current, opId);
}

function startEdit(m, opId) {
  ui.editing = opId;
  $('editing').hidden = false;
  $('composer-text').value = messageText(m);
  $('composer-text').focus();
  return Promise.resolve();
}

$('edit-cancel').addEventListener('click', () => {
  ui.editing = null;
  $('editing').hidden = true;
  $('composer-text').value = '';
});

// History paging: the button, or scrolling to the top, asks the SDK for the page before the
// oldest message shown (the SDK fetches the conversation's ops from the node once, decrypts
// them, and pages locally) and widens the window to it.
async function loadOlder() {
  const conv = ui.current;
  if (!conv || ui.loadingOlder || (ui.oldest.has(conv) && ui.more.get(conv) === false)) return;
  ui.loadingOlder = true;
  $('load-older').disabled = true;
  const scroller = $('scroller');
  const fromBottom = scroller.scrollHeight - scroller.scrollTop;
  try {
    const before = ui.oldest.get(conv) ?? null;
    const page = await ui.client.history(conv, { before, limit: PAGE });
    ui.more.set(conv, Boolean(page.more));
    if (page.messages.length) ui.oldest.set(conv, page.messages[0].opId);
    else if (!before) ui.oldest.set(conv, null);
    if (conv === ui.current) {
      renderMessages();
      scroller.scrollTop = scroller.scrollHeight - fromBottom; // keep the reader's place
    }
  } finally {
    ui.loadingOlder = false;
    $('load-older').disabled = false;
  }
}

$('load-older').addEventListener('click', () => loadOlder().catch(report));
$('scroller').addEventListener('scroll', () => {
  if ($('scroller').scrollTop < 20) loadOlder().catch(report);
});

// -- composing ------------------------------------------------------------------------------

$('composer').addEventListener('submit', async (event) => {
  event.preventDefault();
  const box = $('composer-text');
  const text = box.value.trim();
  $('composer-error').textContent = '';
  if (!text || !ui.current) return;
  const conv = ui.current;
  const editing = ui.editing;
  box.value = '';
  ui.editing = null;
  $('editing').hidden = true;
  stopTyping();
  try {
    if (editing) await ui.client.edit(conv, editing, text);
    else await ui.client.send(conv, text);
  } catch (err) {
    $('composer-error').textContent = describe(err);
    if (!box.value) box.value = text; // give the text back so nothing is lost
  }
});

$('composer-text').addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $('composer').requestSubmit();
  }
});

$('composer-text').addEventListener('input', () => {
  if (!ui.current) return;
  const now = Date.now();
  if (now - ui.typingSent > TYPING_REFRESH_MS) {
    ui.typingSent = now;
    ui.client.typing(ui.current, true).catch(() => {});
  }
  clearTimeout(ui.typingStop);
  ui.typingStop = setTimeout(stopTyping, TYPING_IDLE_MS);
});

function stopTyping() {
  clearTimeout(ui.typingStop);
  if (ui.typingSent && ui.current) ui.client.typing(ui.current, false).catch(() => {});
  ui.typingSent = 0;
}

// -- live events ----------------------------------------------------------------------------

function onConversationChanged(conv) {
  // Many ops can land at once (a catch-up page): render once per frame.
  if (conv === ui.current && document.visibilityState === 'visible') markRead();
  if (ui.renderQueued) return;
  ui.renderQueued = true;
  setTimeout(() => {
    ui.renderQueued = false;
    renderMessages();
    refreshConversations().catch(quiet);
  }, 0);
}

function markRead() {
  const conv = ui.current;
  if (!conv) return;
  const last = ui.client.messages(conv).filter((m) => m.author !== ui.me).at(-1);
  if (!last || ui.marked.get(conv) === last.opId) return;
  ui.marked.set(conv, last.opId);
  ui.client.markRead(conv, last.opId).then(
    () => refreshConversations().catch(quiet),
    () => ui.marked.delete(conv),
  );
}

document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible') markRead();
});

function onTyping(ev) {
  const peers = ui.typingPeers.get(ev.conv) ?? new Map();
  ui.typingPeers.set(ev.conv, peers);
  clearTimeout(peers.get(ev.user));
  if (ev.active) peers.set(ev.user, setTimeout(() => onTyping({ ...ev, active: false }), TYPING_EXPIRE_MS));
  else peers.delete(ev.user);
  renderTyping();
}

function renderTyping() {
  const users = [...(ui.typingPeers.get(ui.current)?.keys() ?? [])];
  $('typing').textContent = users.length ? `${users.join(', ')} ${users.length > 1 ? 'are' : 'is'} typing…` : '';
}

// -- safety numbers -------------------------------------------------------------------------

$('safety-toggle').addEventListener('click', () => {
  const open = $('safety-panel').hidden;
  $('safety-panel').hidden = !open;
  $('safety-toggle').setAttribute('aria-expanded', String(open));
  if (open) renderSafety().catch(report);
});

async function renderSafety() {
  const c = ui.convs.get(ui.current);
  const peer = c && peerOf(c);
  if (!peer) return;
  $('safety-peer').textContent = peer;
  $('safety-number').textContent = 'computing…';
  const devices = await ui.client.devices(peer); // refreshes the directory (TOFU pins)
  await ui.client.devices(ui.me);
  $('safety-number').textContent = ui.client.safetyNumber(peer);
  $('safety-devices').replaceChildren(
    ...devices.map((d) => {
      const item = el('li', { textContent: `${d.device}${d.name ? ` (${d.name})` : ''}` });
      if (d.trusted === false) {
        item.className = 'warn';
        item.append(' — key changed. ');
        const button = el('button', { type: 'button', className: 'link', textContent: 'Trust this key' });
        button.addEventListener('click', async () => {
          await ui.client.trust(peer, d.device);
          await renderSafety();
        });
        item.append(button);
      }
      return item;
    }),
  );
}

function onDeviceNews(ev, changed) {
  const c = ui.convs.get(ui.current);
  if (c && peerOf(c) === ev.user && !$('safety-panel').hidden) renderSafety().catch(report);
  if (changed) {
    $('composer-error').textContent =
      `${ev.user}'s device ${ev.device} has a new key. Check the safety number before trusting it.`;
  }
}

// -- helpers --------------------------------------------------------------------------------

function setBusy(form, busy) {
  for (const button of form.querySelectorAll('button')) button.disabled = busy;
}

function describe(err) {
  return err?.message || String(err);
}

/** A failed user action: say why next to the composer. */
function report(err) {
  console.error(err);
  $('composer-error').textContent = describe(err);
}

/** A failed background refresh: the connection is down (the banner says so) and the next
 * catch-up refreshes again, so only a non-network failure is worth showing. */
function quiet(err) {
  if (err?.retryable || err?.code === 'network' || err?.code === 'timeout') console.warn('yanzi:', err);
  else report(err);
}

start().catch((err) => {
  report(err);
  showAuth();
});
