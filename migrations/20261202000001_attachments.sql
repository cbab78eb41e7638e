-- Files announced in chats, part of the chats read model: what each one is,
-- who announced it, and, once a message carries it, that message's seq and
-- the attachment's place among the message's. Uploads no message carries are
-- the ones deleted once they have waited too long.
CREATE TABLE rm_chat_attachments
(
    attachment_id uuid PRIMARY KEY,
    chat_id       uuid        NOT NULL,
    filename      text        NOT NULL,
    content_type  text        NOT NULL,
    size          bigint      NOT NULL CHECK (size >= 1),
    announced_by  uuid        NOT NULL,
    announced_at  timestamptz NOT NULL,
    -- the message carrying it, and its place among that message's attachments
    seq           bigint,
    place         integer,
    -- whether a thumbnail of the image is stored beside it
    thumbnail     boolean     NOT NULL DEFAULT false
);

CREATE INDEX rm_chat_attachments_message ON rm_chat_attachments (chat_id, seq);
CREATE INDEX rm_chat_attachments_unused ON rm_chat_attachments (announced_at) WHERE seq IS NULL;


-- Uploads deleted because no message carried them in time, so that each is
-- deleted once; kept beside the read model, which the log alone fills.
CREATE TABLE attachment_deletions
(
    attachment_id uuid PRIMARY KEY,
    deleted_at    timestamptz NOT NULL DEFAULT now()
);
